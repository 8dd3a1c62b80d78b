"""bench/gpu_smoke.py: its options and case list, and one tiny case end to end on the CPU (the GPU parts run on a
GPU machine only)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_smoke", None)


def _names(cases) -> list[str]:
    return [c.name for c in cases]


def test_parse_args_defaults(smoke):
    args = smoke.parse_args([])
    assert args.model is None and args.only is None and args.out is None and args.work_dir is None
    assert args.steps == 8 and args.device == "cuda" and not args.allow_cpu


def test_parse_args_options(smoke, tmp_path):
    args = smoke.parse_args(
        ["--model", "some/model", "--steps", "3", "--only", "fp32, lora,", "--out", str(tmp_path / "r.json")]
        + ["--device", "cpu", "--allow-cpu"]
    )
    assert args.model == "some/model" and args.steps == 3 and args.only == ["fp32", "lora"]
    assert args.out == tmp_path / "r.json" and args.device == "cpu" and args.allow_cpu


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--steps", "0"], "--steps must be at least 1"), (["--device", "tpu"], "argument --device: invalid choice")],
)
def test_parse_args_rejects_bad_values(smoke, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        smoke.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_distributed_cases_need_two_gpus(smoke):
    args = smoke.parse_args([])
    for gpus in (0, 1):
        names = _names(smoke.cases(args, gpus))
        assert "ddp" not in names and "fsdp" not in names
        assert {"fp32", "bf16", "bf16_mixed", "bf16_grad_rows", "lora", "grad_ckpt", "eval", "geffect"} <= set(names)
        assert any(c.shape == "embedded" for c in smoke.cases(args, gpus))  # the timing case
    assert {"ddp", "fsdp"} <= set(_names(smoke.cases(args, 2)))
    assert _names(smoke.cases(args, 2)) == list(smoke.CASE_NAMES)  # every case, in the documented order


def test_only_filters_in_case_order(smoke):
    assert _names(smoke.cases(smoke.parse_args(["--only", "geffect,fp32"]), 1)) == ["fp32", "geffect"]
    assert _names(smoke.cases(smoke.parse_args(["--only", "fsdp"]), 2)) == ["fsdp"]


def test_only_unknown_or_unavailable_case_is_an_error(smoke):
    with pytest.raises(ValueError, match=r"unknown case\(s\) fp33; the cases are fp32, bf16"):
        smoke.cases(smoke.parse_args(["--only", "fp32,fp33"]), 1)
    with pytest.raises(ValueError, match="ddp needs at least 2 GPUs; this machine has 1"):
        smoke.cases(smoke.parse_args(["--only", "ddp"]), 1)


def test_main_without_cuda_needs_allow_cpu(smoke, monkeypatch, capsys):
    monkeypatch.setattr(smoke.torch.cuda, "is_available", lambda: False)
    assert smoke.main(["--only", "fp32"]) == 2
    captured = capsys.readouterr()
    assert "CUDA is not available" in captured.err and "--allow-cpu" in captured.err and captured.out == ""
    assert smoke.main(["--device", "cpu"]) == 2
    assert "--allow-cpu" in capsys.readouterr().err


def test_main_unknown_case_exits_with_message(smoke, capsys):
    assert smoke.main(["--allow-cpu", "--device", "cpu", "--only", "nope"]) == 2
    assert "unknown case(s) nope" in capsys.readouterr().err


def test_cpu_dry_run_of_one_tiny_case(smoke, tmp_path, capsys):
    out = tmp_path / "smoke.json"
    argv = ["--allow-cpu", "--device", "cpu", "--only", "fp32", "--steps", "2", "--out", str(out)]
    assert smoke.main([*argv, "--work-dir", str(tmp_path / "work")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["ok"] and printed["device"] == "cpu" and printed["gpus"] == 0
    [record] = printed["cases"]
    assert record["name"] == "fp32" and record["ok"] and record["finite"] and record["error"] is None
    assert record["steps"] == 2 and record["checked_values"] > 0
    assert record["seconds_per_step"] > 0 and record["peak_memory_gb"] is None  # no CUDA statistics on the CPU
    assert (tmp_path / "work" / "fp32" / "metrics.jsonl").is_file()


def test_nonfinite_names_nan_inf_and_null(smoke):
    assert smoke.nonfinite({"a": 1.0, "b": float("nan"), "c": None, "d": float("-inf"), "e": 3, "f": True}) == [
        "b",
        "c",
        "d",
    ]
