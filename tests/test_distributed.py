"""Multi-process runs: two processes launched with torchrun (gloo on CPU), data parallel (ddp) and sharded (fsdp).

Two processes with batch b each must take the same steps as one process with batch 2b: under ddp the per-objective
gradient rows are averaged across processes before the Gramian; under fsdp each process holds its shards of the
averaged rows (FSDP2's reduce-scatter) and the partial Gramians are summed. Every loss is a mean of per-sample means,
so losses, coefficients and weights must all agree.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mollm.engine.config import load_config
from mollm.runs import run
from mollm.engine.checkpoints import load_model_or_checkpoint as load_model
from mollm.models.tiny import tiny_gpt2, tiny_model

FACTS = "n_people=6,seed=1,forget_fraction=0.34"


def _tree(out: Path, name: str, batch: int) -> dict:
    return {
        "name": name,
        "output_dir": str(out / "{name}"),
        "max_length": 48,
        "seed": 3,
        "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
        "objectives": [
            {"name": "forget", "loss": "ga", "data": "forget", "batch_size": batch},
            {"name": "kl", "loss": "kl", "data": "retain", "batch_size": batch},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": batch},
        ],
        "aggregator": {"name": "ds_mgda"},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "steps": 4,
        "checkpoint_every": 2,
        "evaluation": {"every": 2, "suites": {"retain": {"data": "retain", "limit": 2, "metrics": ["nll", "probability"]}}},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_model(model: torch.nn.Module, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _write(tmp_path: Path, tree: dict) -> Path:
    cfg = tmp_path / f"{tree['name']}.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    return cfg


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_steps(got: list[dict], want: list[dict], labels=("forget", "kl", "retain")) -> None:
    assert [x["step"] for x in got] == [x["step"] for x in want]
    for a, b in zip(got, want):
        for name in labels:
            for key in ("losses", "coefficients"):
                assert abs(a[key][name] - b[key][name]) < 1e-5 * max(1.0, abs(b[key][name])), (a["step"], key, name)


def _assert_same_weights(folder_a: Path, folder_b: Path, atol: float = 1e-5) -> None:
    w_a = load_file(str(folder_a / "model.safetensors"))
    w_b = load_file(str(folder_b / "model.safetensors"))
    assert w_a.keys() == w_b.keys()
    for k in w_b:
        torch.testing.assert_close(w_a[k], w_b[k], rtol=0, atol=atol, msg=k)


def test_ddp_and_fsdp_match_one_process_with_twice_the_batch_and_resume_to_the_same_weights(tmp_path, tokenizer):
    model = _save_model(tiny_model(), tokenizer, tmp_path / "tiny")
    ddp = _write(tmp_path, {**_tree(tmp_path, "ddp", batch=2), "model": model})
    fsdp = _write(tmp_path, {**_tree(tmp_path, "fsdp", batch=2), "model": model, "distributed": {"strategy": "fsdp"}})
    _launch_two(ddp)
    _launch_two(fsdp)
    single = run(load_config({**_tree(tmp_path, "single", batch=4), "model": model}), progress=False)

    for name in ("ddp", "fsdp"):
        run_dir = tmp_path / name
        summary = json.loads((run_dir / "run.json").read_text())
        assert summary["status"] == "completed" and summary["processes"] == 2 and summary["strategy"] == name
        # One log, written by the main process only; every step's losses AND coefficients equal the 1 x 4 run's.
        _assert_same_steps(_metrics(run_dir), single.metrics)
        assert (run_dir / "eval" / "step_2.json").is_file() and (run_dir / "checkpoints" / "step_2").is_dir()
        _assert_same_weights(run_dir / "model", single.model_dir)
    # The FSDP checkpoint is sharded: each process wrote its own shards and RNG state.
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step_2"
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2
    assert (ckpt / "rng_0.pt").is_file() and (ckpt / "rng_1.pt").is_file()
    # ... and loads as a whole model in one process, equal to the one-process run's checkpoint at that step.
    sharded, _ = load_model(str(ckpt))
    whole, _ = load_model(str(tmp_path / "single" / "checkpoints" / "step_2"))
    for (name, a), b in zip(sharded.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    # Resuming a finished run restarts from its last checkpoint (step 2) and must redo steps 3-4 identically: model,
    # optimizer, scheduler and every process's RNG state come back from the checkpoint (sharded ones under fsdp).
    for name, cfg in (("ddp", ddp), ("fsdp", fsdp)):
        first = load_file(str(tmp_path / name / "model" / "model.safetensors"))
        _launch_two(cfg, "--set", "resume=true")
        again = load_file(str(tmp_path / name / "model" / "model.safetensors"))
        for k in first:
            torch.testing.assert_close(again[k], first[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")
        assert [x["step"] for x in _metrics(tmp_path / name)] == [1, 2, 3, 4]


def test_fsdp_shards_another_architecture_lora_adapters_bf16_and_hybrid(tmp_path, tokenizer):
    gpt2 = _save_model(tiny_gpt2(), tokenizer, tmp_path / "gpt2_weights")
    llama = _save_model(tiny_model(), tokenizer, tmp_path / "llama_weights")
    lora = {"r": 4, "alpha": 8, "merge": True}
    no_eval = {"before": False, "after": False}
    trees = {  # each torchrun launch costs ~20 s here: GPT-2 and the 2-D mesh share one
        "gpt2_hsdp": {**_tree(tmp_path, "gpt2_hsdp", batch=2), "model": gpt2, "evaluation": no_eval},
        "lora": {**_tree(tmp_path, "lora", batch=2), "model": llama, "lora": lora, "evaluation": no_eval},
        "bf16": {**_tree(tmp_path, "bf16", batch=2), "model": llama, "evaluation": no_eval},
    }
    for name, tree in trees.items():
        # hsdp: a 2-D mesh, shards of size 1 replicated over 2 processes (the multi-node layout, one node per process)
        sharded = {**tree, "distributed": {"strategy": "fsdp", "shard_size": 1 if name == "gpt2_hsdp" else None}}
        if name == "bf16":  # FSDP's bf16 all-gathers and compute, float32 reduce-scatter, against a float32 run
            sharded["mixed_precision"] = "bf16"
        _launch_two(_write(tmp_path, sharded))
        tree_one = {**tree, "name": f"{name}_one"}
        tree_one["objectives"] = [{**o, "batch_size": 4} for o in tree["objectives"]]
        single = run(load_config(tree_one), progress=False)
        got = _metrics(tmp_path / name)
        if name == "bf16":
            assert all(x["finite"] for x in got)
            for a, b in zip(got, single.metrics):
                for k, v in b["losses"].items():
                    assert math.isfinite(a["losses"][k]) and abs(a["losses"][k] - v) < 2e-2 * max(1.0, abs(v))
            continue
        _assert_same_steps(got, single.metrics)
        _assert_same_weights(tmp_path / name / "model", single.model_dir)


def _launch_two(cfg: Path, *extra: str) -> None:
    """``torchrun --nproc_per_node 2 -m mollm unlearn CFG``: the launch the README documents."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    proc = subprocess.run(
        [*cmd, "-m", "mollm", "unlearn", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
