"""Data-parallel runs: two processes launched with torchrun (gloo on CPU) through accelerate.

Two processes with batch b each must take the same steps as one process with batch 2b: the per-objective gradients
are averaged across processes before the Gramian, and every loss is a mean of per-sample means.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mollm.engine.config import load_config
from mollm.engine.run import run
from mollm.models.tiny import tiny_model

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
        "evaluation": {"every": 2, "max_items": 2, "accuracy": False},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    tree = _tree(tmp_path, "ddp", batch=2)
    tree["model"] = str(model_dir)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    _launch_two(cfg)

    single = run(load_config({**_tree(tmp_path, "single", batch=4), "model": str(model_dir)}), progress=False)
    ddp_dir = tmp_path / "ddp"
    summary = json.loads((ddp_dir / "run.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2
    lines = [json.loads(x) for x in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]  # one log, written by the main process only
    for a, b in zip(lines, single.metrics):
        for name in ("forget", "kl", "retain"):
            assert abs(a["losses"][name] - b["losses"][name]) < 1e-4 * max(1.0, abs(b["losses"][name]))
    assert (ddp_dir / "eval" / "step_2.json").is_file() and (ddp_dir / "checkpoints" / "step_2").is_dir()
    w_ddp = load_file(str(ddp_dir / "model" / "model.safetensors"))
    w_one = load_file(str(single.model_dir / "model.safetensors"))
    assert w_ddp.keys() == w_one.keys()
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], rtol=1e-4, atol=1e-5)


def test_two_process_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    tree = {**_tree(tmp_path, "ddp", batch=2), "model": str(model_dir), "evaluation": {"before": False, "after": False}}
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    _launch_two(cfg)
    first = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    # Resuming the finished run restarts from its last checkpoint (step 2) and must redo steps 3-4 identically:
    # model, optimizer, scheduler and every process's RNG state come back from the checkpoint.
    _launch_two(cfg, "--set", "resume=true")
    again = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    for k in first:
        torch.testing.assert_close(again[k], first[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


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
