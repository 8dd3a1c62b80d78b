"""The memory arithmetic of bench/memory.py (the README table and docs/scaling.md's 8B plan come from it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "memory.py"
_spec = importlib.util.spec_from_file_location("bench_memory", _PATH)
memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory)

SHAPE = {"params": 1000, "lora_params": 10, "hidden": 8, "intermediate": 16, "layers": 2, "heads": 2, "vocab": 50}


def test_sharding_divides_the_state_and_lora_drops_the_reference():
    whole = memory.arithmetic({}, SHAPE, 2, batch=1, length=4)
    sharded = memory.arithmetic({"distributed": {"strategy": "fsdp"}}, SHAPE, 2, batch=1, length=4)
    for term in ("weights", "reference", "gradient_rows", "optimizer"):
        assert sharded[term] == pytest.approx(whole[term] / 2)
    lora = memory.arithmetic({"lora": {"r": 8}}, SHAPE, 1, batch=1, length=4)
    assert lora["reference"] == 0 and lora["gradient_rows"] == pytest.approx(3 * 10 * 4 / 1e9)


def test_bf16_rows_halve_the_rows_and_add_the_optimizer_copy():
    fp32 = memory.arithmetic({}, SHAPE, 1)
    rows = memory.arithmetic({"grad_dtype": "bfloat16"}, SHAPE, 1)
    assert rows["gradient_rows"] == pytest.approx(fp32["gradient_rows"] / 2)
    assert rows["combined_copy"] == pytest.approx(1000 * 4 / 1e9) and fp32["combined_copy"] == 0


def test_checkpointing_keeps_less_activation_memory():
    plain = memory.arithmetic({}, SHAPE, 1, batch=4, length=64)
    ckpt = memory.arithmetic({"gradient_checkpointing": True}, SHAPE, 1, batch=4, length=64)
    assert ckpt["activations"] < plain["activations"]


def test_llama3_8b_plan_fits_where_docs_say():
    plan = memory.plan()
    lora = next(v for k, v in plan.items() if k.startswith("1 GPU: LoRA"))
    fsdp = next(v for k, v in plan.items() if k.startswith("8 GPUs FSDP: full, fp32"))
    assert lora["total"] < 24 and fsdp["total"] < 40
    assert all(v["total"] > 80 for k, v in plan.items() if "does not fit" in k)


def test_committed_results_render_as_the_readme_table():
    import json

    results = json.loads((_PATH.parent / "results" / "memory.json").read_text())
    table = memory.markdown(results)
    assert set(results["cases"]) == set(memory.CASES)
    assert all(f"| {case} |" in table for case in memory.CASES)
