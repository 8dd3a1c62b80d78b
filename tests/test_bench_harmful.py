"""bench/harmful.py: every method's run is valid, the held-out prompts are held out, and the selection rule and the
report do what bench/README.md says."""

from __future__ import annotations

import importlib.util
import sys
import json
from pathlib import Path

import pytest

from mollm.data import load_dataset_spec
from mollm.engine.config import load_config
from mollm.evaluation.evaluate import check_suites
from mollm.runs import validate

_PATH = Path(__file__).resolve().parents[1] / "bench" / "harmful.py"
_spec = importlib.util.spec_from_file_location("bench_harmful", _PATH)
harmful = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harmful)


@pytest.mark.parametrize("method", list(harmful.METHODS))
def test_every_method_is_a_valid_run(method: str, tmp_path: Path) -> None:
    config = load_config(harmful.run_tree(method, 3e-5, 0, tmp_path))
    validate(config)  # data, options, truncation at max_length, ...: raises on any problem
    assert config.format.kind == "chat" and config.steps == harmful.STEPS
    assert not (tmp_path / "runs").exists()  # validation writes nothing


def test_unseen_prompts_are_never_trained_on(tmp_path: Path) -> None:
    tree = harmful.run_tree("mollm", 3e-5, 0, tmp_path)
    trained = {r.question for spec in tree["data"].values() for r in load_dataset_spec(spec)}
    suites = harmful.suites(tmp_path / "judge")
    unseen = load_dataset_spec(suites["unseen"]["data"], limit=suites["unseen"]["limit"])
    normal = load_dataset_spec(suites["normal"]["data"], limit=suites["normal"]["limit"])
    assert len(unseen) == harmful.N_EVAL["unseen"] and len({r.question for r in unseen}) == len(unseen)
    assert not {r.question for r in unseen} & trained
    assert not {r.question for r in normal} & trained
    forget = load_dataset_spec(suites["forget"]["data"], limit=suites["forget"]["limit"])
    assert {r.question for r in forget} <= trained


def test_suites_are_valid() -> None:
    suites = harmful.suites(Path("judge"))
    for suite in suites.values():  # the trained judge is a folder that exists only after training it
        suite["metrics"] = [
            {**m, "judge": "keyword"} if isinstance(m, dict) and m.get("judge") == "judge" else m
            for m in suite["metrics"]
        ]
    assert check_suites(suites) == []


ORIGINAL = {"normal/nll": 2.0, "normal/fluency": 3.0, "normal/refusal_rate": 0.10, "unseen/judge": 0.6}


def _point(method: str, lr: float, **metrics: float) -> dict:
    return {"train": {"method": method, "lr": lr, "seed": 0}, "chat": {**ORIGINAL, "normal/kl": 0.1, **metrics}}


def test_rule_bounds_are_the_documented_ones() -> None:
    assert all(harmful.admissible({**ORIGINAL, "normal/nll": 2.2, "normal/fluency": 4.5, "normal/refusal_rate": 0.15},
                                  ORIGINAL).values())
    assert harmful.admissible({**ORIGINAL, "normal/nll": 2.21}, ORIGINAL) == {
        "normal/nll": False, "normal/fluency": True, "normal/refusal_rate": True}
    assert not harmful.admissible({**ORIGINAL, "normal/fluency": 4.51}, ORIGINAL)["normal/fluency"]
    assert not harmful.admissible({**ORIGINAL, "normal/refusal_rate": 0.151}, ORIGINAL)["normal/refusal_rate"]
    assert not harmful.admissible({**ORIGINAL, "normal/nll": float("nan")}, ORIGINAL)["normal/nll"]


def test_choose_takes_the_lowest_admissible_harmful_rate_ties_by_kl() -> None:
    points = [
        _point("m", 1e-5, **{"unseen/judge": 0.5}),
        _point("m", 3e-5, **{"unseen/judge": 0.2, "normal/kl": 0.3}),
        _point("m", 1e-4, **{"unseen/judge": 0.2, "normal/kl": 0.2}),
        _point("m", 3e-4, **{"unseen/judge": 0.0, "normal/nll": 9.0}),  # lowest, but breaks utility
    ]
    assert harmful.choose(points, ORIGINAL) == {"point": "m_lr0.0001_s0", "lr": 1e-4, "admissible": True}
    assert harmful.choose(points[3:], ORIGINAL) == {"point": None, "admissible": False}


def test_report_from_cached_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harmful, "OUT", tmp_path)
    lrs = [1e-5, 1e-4]

    def cache(name: str, train: dict, chat: dict) -> None:
        for kind, obj in (("points", train), ("evals", {"metrics": chat})):
            (tmp_path / kind).mkdir(exist_ok=True)
            (tmp_path / kind / (f"{name}.json" if kind == "points" else f"{name}.chat.json")).write_text(json.dumps(obj))

    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "original.chat.json").write_text(json.dumps({"metrics": ORIGINAL}))
    for lr, judge in zip(lrs, (0.4, 0.1)):
        for seed in (0, 1, 2) if lr == 1e-4 else (0,):
            train = {"method": "ga", "lr": lr, "seed": seed, "forget_grad_norm": [1.0, 2.0], "forget_grad_norm_max": 2.0,
                     "conflict_probability": None, "seconds_per_step": 1.0, "status": "completed"}
            cache(harmful.point_name("ga", lr, seed), train, {**ORIGINAL, "unseen/judge": judge + 0.1 * seed})
    for lr in lrs:  # npo breaks the NLL bound everywhere
        train = {"method": "npo", "lr": lr, "seed": 0, "forget_grad_norm": [1.0], "forget_grad_norm_max": 1.0,
                 "conflict_probability": None, "seconds_per_step": 1.0, "status": "completed"}
        cache(harmful.point_name("npo", lr, 0), train, {**ORIGINAL, "normal/nll": 9.0, "unseen/judge": 0.0})
    summary = harmful.write_report(["ga", "npo"], lrs)
    assert summary["chosen"]["npo"] == {"lr": None, "note": "no admissible grid point", "fallback_lr": 1e-5,
                                        "fallback_metrics": {**ORIGINAL, "normal/nll": 9.0, "unseen/judge": 0.0},
                                        "violations": ["normal/nll"]}
    assert summary["chosen"]["ga"]["lr"] == 1e-4 and summary["chosen"]["ga"]["seeds"] == [0, 1, 2]
    mean, sd = summary["chosen"]["ga"]["mean_sd"]["unseen/judge"]
    assert mean == pytest.approx(0.2) and sd == pytest.approx(0.1)
    report = (tmp_path / "report.md").read_text()
    assert "| ga | 0.0001 | 3 | 0.2 ± 0.1 |" in report
    assert (tmp_path / "tradeoff.png").stat().st_size > 0 and (tmp_path / "grad_norms.png").stat().st_size > 0


def test_shipped_config_is_the_chosen_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harmful, "SHIPPED", {"npo": tmp_path / "harmful" / "npo.yaml", "ga": tmp_path / "ga.yaml"})
    stats = {harmful.PRIMARY: (0.1, 0.05), "normal/nll": (2.0, 0.01)}
    ga = {"lr": None, "fallback_lr": 1e-5, "fallback_metrics": {harmful.PRIMARY: 0.2, "normal/nll": 6.8},
          "violations": ["normal/nll", "normal/fluency"]}
    summary = {"chosen": {"npo": {"lr": 1e-4, "seeds": [0, 1, 2], "mean_sd": stats}, "ga": ga, "wga": {"lr": None}}}
    assert harmful.ship_configs(summary) == [tmp_path / "harmful" / "npo.yaml", tmp_path / "ga.yaml"]
    header = " ".join(line[2:] for line in (tmp_path / "ga.yaml").read_text().splitlines() if line.startswith("# "))
    assert "NO grid point" in header and "lr 1e-05" in header and "bound on normal/nll, normal/fluency." in header
    monkeypatch.chdir(_PATH.parents[1])  # the shipped data paths are relative to the repository root
    assert load_config(tmp_path / "ga.yaml").optimizer.lr == 1e-5
    config = load_config(tmp_path / "harmful" / "npo.yaml")
    validate(config)
    bench = load_config(harmful.run_tree("npo", 1e-4, 0, tmp_path))
    assert config.optimizer.lr == 1e-4 and config.steps == bench.steps and config.format == bench.format
    assert config.objectives == bench.objectives and config.aggregator == bench.aggregator
    assert config.max_length == bench.max_length
    header = " ".join(line[2:] for line in (tmp_path / "harmful" / "npo.yaml").read_text().splitlines()
                      if line.startswith("# "))
    assert config.name == "npo" and "0.10 ± 0.05, TruthfulQA answer NLL 2.00." in header and "bound" not in header


def test_log_summary_tells_the_two_conflicts_apart(tmp_path: Path) -> None:
    bench = sys.modules["_bench"]  # bench/harmful.py imported it (bench/_bench.py)
    steps = [  # step 1: gradients conflict but the step raises nothing (MGDA-like); step 2: the step raises one
        {"step": 1, "grad_norms": {"forget": 1.0}, "cosines": {"forget|kl": -0.5}, "conflict": False, "seconds": 2.0},
        {"step": 2, "grad_norms": {"forget": 3.0}, "cosines": {"forget|kl": 0.2}, "conflict": True, "seconds": 4.0},
        {"step": 3, "grad_norms": {"forget": 2.0}, "cosines": {"forget|kl": -0.1}, "conflict": False, "seconds": 3.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (tmp_path / "run.json").write_text(json.dumps({"status": "completed"}))
    got = bench.log_summary(tmp_path, 2)
    assert got["conflict_probability"] == pytest.approx(1 / 3)
    assert got["gradient_conflict_probability"] == pytest.approx(2 / 3)
    assert got["forget_grad_norm"] == [1.0, 3.0, 2.0] and got["forget_grad_norm_max"] == 3.0
    assert got["seconds_per_step"] == 3.0 and got["steps"] == 3
    assert bench.log_summary(tmp_path, 1)["gradient_conflict_probability"] is None


def test_one_seed_shows_its_mean_without_a_spread() -> None:
    bench = sys.modules["_bench"]  # bench/harmful.py imported it (bench/_bench.py)
    runs = [{"a": 0.25, "b": 1.0}, {"a": 0.75, "b": 1.0}]
    stats = bench.seed_stats(runs, ["a", "b", "c"])
    assert bench.mean_sd_cells(stats, ["a", "b", "c"], 2) == ["0.5 ± 0.35", "1 ± 0", "—"]
    assert bench.mean_sd_cells(bench.seed_stats(runs[:1], ["a"]), ["a"], 1) == ["0.25"]
