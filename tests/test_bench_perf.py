"""bench/perf.py on a tiny random model (1 round, 1–2 steps): the results' shape, the cache, and that the loop
comparison is apples to apples (mollm's `linear` loop and the Trainer reach the same weights)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "perf.py"
_spec = importlib.util.spec_from_file_location("bench_perf", _PATH)
perf = importlib.util.module_from_spec(_spec)
sys.modules["bench_perf"] = perf  # dataclasses look their module up
_spec.loader.exec_module(perf)


def _settings(**over):
    kw = {"model": "tiny", "length": 48, "steps_per_round": 2, "rounds": 1, "warmup_rounds": 0, "method_length": 32,
          "method_rounds": 1, "memory_steps": 1, "objectives_m": (2, 3), "lengths": (32, 48), "scaling_rounds": 1,
          "contenders": ("trainer", "linear", "ds_mgda")}
    kw.update(over)
    return perf.Settings(**kw)


def test_fixed_length_records_are_real_text_of_exactly_that_length(tokenizer, shared_data):
    from mollm.data.encode import encode_record
    from mollm.data.readers import read_tofu

    forget = read_tofu(shared_data / "tofu" / "forget01.json")
    for length in (32, 128):
        records = perf.fixed_length_records(forget, tokenizer, length)
        assert len(records) >= 30
        for r in records:
            e = encode_record(r, tokenizer, max_length=length)
            assert len(e["input_ids"]) == length
            assert any(label != -100 for label in e["labels"])  # some answer is scored
        answers = {r.answer for r in forget}
        assert all(r.answer in answers for r in records)


def test_loop_vs_trainer_writes_the_ratios_and_linear_reaches_the_trainers_weights(tmp_path, monkeypatch):
    out = tmp_path / "perf_vs_trainer.json"
    settings = _settings()
    results = perf.run_groups(settings, out, only=("loop_vs_trainer",), work=tmp_path / "work")

    saved = json.loads(out.read_text())
    assert set(saved["ratios"]) == {"linear_vs_trainer", "ds_mgda_vs_trainer"}
    assert all(isinstance(v, float) and v > 0 for v in saved["ratios"].values())
    loop = saved["groups"]["loop_vs_trainer"]["result"]
    assert set(loop["median_seconds_per_step"]) == {"trainer", "linear", "ds_mgda"}
    assert all(len(v) == 2 for v in loop["seconds"].values())  # 1 round x 2 steps, each contender
    assert saved["settings"]["threads"] == 1 and "torch" in saved["machine"]
    assert (tmp_path / "perf.md").read_text().startswith("# Performance")

    # Same loss, batches, optimizer and clipping: the same update up to rounding; ds_mgda takes another direction.
    w = loop["weights"]
    assert w["linear_vs_trainer"]["relative_distance"] < 1e-4 and w["linear_vs_trainer"]["cosine"] > 1 - 1e-8
    assert w["linear_vs_trainer"]["update_norm"] > 0
    assert w["ds_mgda_vs_trainer"]["relative_distance"] > 1e-3
    assert results["targets"]["linear reaches the Trainer's weights (relative distance < 1e-3)"]

    # A re-run skips the finished group; --force (or other settings) redoes it.
    def boom(*a, **k):
        raise AssertionError("a cached group was run again")

    monkeypatch.setattr(perf, "loop_vs_trainer", boom)
    perf.run_groups(settings, out, only=("loop_vs_trainer",), work=tmp_path / "work")
    with pytest.raises(AssertionError, match="cached group"):
        perf.run_groups(settings, out, only=("loop_vs_trainer",), work=tmp_path / "work", force=True)
    with pytest.raises(AssertionError, match="cached group"):
        perf.run_groups(_settings(rounds=2), out, only=("loop_vs_trainer",), work=tmp_path / "work")


def test_per_method_scaling_and_memory_groups(tmp_path):
    out = tmp_path / "perf_vs_trainer.json"
    settings = _settings()
    saved = perf.run_groups(settings, out, only=("per_method", "scaling_objectives", "scaling_length"))
    rows = saved["groups"]["per_method"]["result"]["rows"]
    assert set(rows) == {f"{s}/{m}" for s in perf.SETS for m in perf.METHODS[s]}
    for name, row in rows.items():
        assert row["median_seconds_per_step"] > 0 and row["tokens_per_second"] > 0
        if name.endswith("/linear"):
            assert row["vs_linear"] == 1.0
    assert rows["uce_kl_mismatch/ds_mgda"]["tokens_per_step"] == 3 * 4 * 32
    scaling = saved["groups"]["scaling_objectives"]["result"]["rows"]
    assert set(scaling) == {"m2/linear", "m2/ds_mgda", "m3/linear", "m3/ds_mgda"}
    assert set(saved["groups"]["scaling_length"]["result"]["rows"]) == {"L32/linear", "L32/ds_mgda", "L48/linear",
                                                                        "L48/ds_mgda"}
    assert "ratios" not in saved  # no loop group yet

    mem = perf.memory(settings, rows=["graddiff/linear"])["rows"]  # one subprocess: the full run does every row
    assert mem["graddiff/linear"]["vs_linear"] == 1.0
    assert mem["graddiff/linear"]["peak_above_loaded_bytes"] > 0


def test_ratio_interval_is_the_geometric_mean_with_a_t_interval_on_log_ratios():
    g, lo, hi = perf.ratio_interval([1.05, 1.05, 1.05])
    assert g == pytest.approx(1.05) and lo == pytest.approx(1.05) and hi == pytest.approx(1.05)
    # 0.9 and 1.1: geometric mean sqrt(0.99); log spread symmetric around it; 2 rounds -> t(0.975, 1) = 12.706
    g, lo, hi = perf.ratio_interval([0.9, 1.1])
    assert g == pytest.approx(0.99 ** 0.5)
    assert lo < 1.0 < hi and lo * hi == pytest.approx(g * g)
    import math
    half = 12.706 * abs(math.log(1.1) - math.log(0.9)) / 2 ** 0.5 / 2 ** 0.5
    assert hi == pytest.approx(g * math.exp(half), rel=1e-3)
    g, lo, hi = perf.ratio_interval([1.2])
    assert g == pytest.approx(1.2) and math.isnan(lo) and math.isnan(hi)
