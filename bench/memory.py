"""Benchmark: peak memory of a 3-objective MOLLM run on the embedded SmolLM2-135M for each memory option, against
the arithmetic (weights, reference, m gradient rows, optimizer state, activations).

Cases: ``fp32`` (full fine-tuning), ``bf16`` (bf16 weights), ``bf16_rows`` (fp32 weights, bf16 gradient rows),
``lora`` (r=8 adapters, no reference copy), ``grad_ckpt`` (fp32 + gradient checkpointing), and with 2 processes
under torchrun ``ddp`` and ``fsdp`` (per rank). Objectives UCE (forget) + KL (retain, to the reference) + NLL
(retain) on PKU-SafeRLHF (unsafe / safe answers from ../shared/data), batch 4, rows truncated at 128 tokens, AdamW,
``ds_mgda``.

How it is measured: torch's CPU allocator keeps no statistics, so each case runs in its own process(es). The worker
reads VmRSS before loading the model (the baseline: Python, torch, transformers), runs the real ``mollm.engine.run``
and, after step 1 (everything is allocated by then: reference, rows, optimizer state), resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``); after step 3 it reads ``VmHWM``. "measured" = that peak − the baseline: the
steady training footprint including one step's activations. glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_``)
so freed tensors go back to the OS; RSS still counts allocator slack and communication buffers, so it is an upper
bound. On a GPU the same numbers come from ``torch.cuda.max_memory_allocated`` (bench/gpu_smoke.py).

Each finished case is cached in the results file, so an interrupted benchmark resumes where it stopped.

Usage: ``python bench/memory.py [--only fp32,lora] [--out bench/results/memory.json] [--fresh]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
CASES: dict[str, dict] = {
    "fp32": {},
    "bf16": {"dtype": "bfloat16"},
    "bf16_rows": {"grad_dtype": "bfloat16"},
    "lora": {"lora": {"r": 8, "alpha": 16}},
    "grad_ckpt": {"gradient_checkpointing": True},
    "ddp": {"distributed": {"strategy": "ddp"}},
    "fsdp": {"distributed": {"strategy": "fsdp"}},
}
PROCESSES = {"ddp": 2, "fsdp": 2}
M, BATCH, LENGTH, STEPS = 3, 4, 128, 3
GB = 1e9


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _config(case: str, run_dir: Path) -> dict:
    # PKU-SafeRLHF answers are long, so rows fill (almost) all 128 tokens and the activations are the estimate's.
    pku = Path(__file__).resolve().parents[2] / "shared" / "data" / "pku_saferlhf" / "sample.jsonl"
    return {
        "name": case,
        "output_dir": str(run_dir / "{name}"),
        "max_length": LENGTH,
        "data": {"forget": f"pku:{pku}#unsafe", "retain": f"pku:{pku}#safe"},
        "objectives": [
            {"name": "forget", "loss": "uce", "data": "forget", "batch_size": BATCH},
            {"name": "kl", "loss": "kl", "data": "retain", "batch_size": BATCH},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": BATCH},
        ],
        "optimizer": {"name": "adamw", "lr": 1e-5},
        "steps": STEPS,
        "evaluation": {"before": False, "after": False},
        **CASES[case],
    }


def worker(case: str, out_dir: Path) -> None:
    """One process of one case: measure and write ``<out_dir>/<case>_rank<R>.json``."""
    import torch

    from mollm.engine.config import load_config
    from mollm.runs import run
    from mollm.models.loading import load_model

    torch.set_num_threads(1 if case in PROCESSES else 2)
    baseline = _rss_kb("VmRSS")
    model, tokenizer = load_model()
    shape = {
        "params": sum(p.numel() for p in model.parameters()),
        "hidden": model.config.hidden_size,
        "intermediate": model.config.intermediate_size,
        "layers": model.config.num_hidden_layers,
        "heads": model.config.num_attention_heads,
        "vocab": model.config.vocab_size,
    }
    shape["lora_params"] = _lora_params(model, CASES["lora"]["lora"]["r"])
    after_load = _rss_kb("VmRSS")
    seen: dict[str, float] = {}

    def on_step(step: int, record: dict) -> None:
        if step == 1:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        if step == STEPS:
            seen["peak_kb"] = _rss_kb("VmHWM")
            seen["seconds_per_step"] = record["seconds"]

    run(load_config(_config(case, out_dir / "runs")), model=model, tokenizer=tokenizer, progress=False, on_step=on_step)

    rank = int(os.environ.get("RANK", "0"))
    result = {
        "case": case,
        "rank": rank,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "baseline_gb": baseline * 1024 / GB,
        "weights_loaded_gb": (after_load - baseline) * 1024 / GB,
        "measured_gb": (seen["peak_kb"] - baseline) * 1024 / GB,
        "seconds_per_step": seen["seconds_per_step"],
        "shape": shape,
    }
    (out_dir / f"{case}_rank{rank}.json").write_text(json.dumps(result))


def _lora_params(model, r: int) -> int:
    """Adapter parameters mollm's LoRA adds (its default targets): r · (in + out) for each adapted Linear."""
    import torch

    from mollm.models.lora import default_target_modules

    targets = set(default_target_modules(model))
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets and ".layers." in f".{name}"
    )


def arithmetic(
    opts: dict, shape: dict, processes: int, *, batch: int = BATCH, length: int = LENGTH, m: int = M
) -> dict[str, float]:
    """What a run with the options ``opts`` must hold, in GB per process: the terms the README table shows."""
    p = shape["params"]
    mixed = opts.get("mixed_precision") == "bf16"
    w_bytes = 2 if opts.get("dtype") == "bfloat16" else 4
    lora = "lora" in opts
    t = shape["lora_params"] if lora else p
    g_bytes = 2 if opts.get("grad_dtype") == "bfloat16" or opts.get("dtype") == "bfloat16" else 4
    fsdp = opts.get("distributed", {}).get("strategy") == "fsdp"
    shard = processes if fsdp else 1
    terms = {
        "weights": p * w_bytes / shard,
        "reference": 0.0 if lora else p * w_bytes / shard,
        "gradient_rows": m * t * g_bytes / shard,
        "optimizer": 2 * t * w_bytes / shard,  # AdamW: exp_avg and exp_avg_sq in the weights' dtype
    }
    # Activations of one objective's forward kept for its backward (the graphs are freed one objective at a time),
    # per token: the residual stream, q/k/v/o, attention probabilities and the MLP's three projections per layer,
    # plus the float32 logits and their log-softmax; with checkpointing each block's input, and one block at a time.
    h, i, layers, heads, v = shape["hidden"], shape["intermediate"], shape["layers"], shape["heads"], shape["vocab"]
    a_bytes = 2 if mixed else w_bytes
    tokens = batch * length
    block = (8 * h + 4 * i + heads * length) * a_bytes
    kept = layers * (h * a_bytes if opts.get("gradient_checkpointing") else block)
    if opts.get("gradient_checkpointing"):
        kept += block
    terms["activations"] = tokens * (kept + 3 * v * 4)
    if fsdp:  # one decoder block's weights gathered whole (two with prefetching) in the all-gather dtype
        terms["activations"] += 2 * (p - 2 * v * h) / layers * (2 if mixed else w_bytes)
    # Rows in another dtype than the weights: the combined gradient is handed to the optimizer as a copy in the
    # weights' dtype, alive during the optimizer step only (activations are freed by then).
    terms["combined_copy"] = t * w_bytes / shard if g_bytes != w_bytes else 0.0
    terms = {k: val / GB for k, val in terms.items()}
    state = terms["weights"] + terms["reference"] + terms["gradient_rows"] + terms["optimizer"]
    terms["total"] = state + max(terms["activations"], terms["combined_copy"])
    return terms


# Llama-3-8B(-Instruct): untied 128k embeddings, 32 blocks, grouped-query attention (8 key/value heads).
LLAMA3_8B = {"params": 8_030_261_248, "hidden": 4096, "intermediate": 14336, "layers": 32, "heads": 32, "vocab": 128256}
LLAMA3_8B["lora_params"] = 32 * 16 * (2 * 8192 + 2 * 5120 + 3 * 18432)  # r=16 on q, k, v, o, gate, up, down
PLANS = {
    "1 GPU: LoRA r=16, bf16 weights, checkpointing": (
        {"dtype": "bfloat16", "lora": {"r": 16}, "gradient_checkpointing": True}, 1),
    "1 GPU: full, bf16 weights, no checkpointing (does not fit)": ({"dtype": "bfloat16"}, 1),
    "8 GPUs DDP: full, fp32 weights + bf16 autocast, checkpointing (does not fit)": ({"mixed_precision": "bf16", "gradient_checkpointing": True}, 8),
    "8 GPUs FSDP: full, fp32 weights + bf16 compute, bf16 rows, checkpointing": (
        {"mixed_precision": "bf16", "grad_dtype": "bfloat16", "gradient_checkpointing": True,
         "distributed": {"strategy": "fsdp"}}, 8),
    "8 GPUs FSDP: full, bf16 weights, checkpointing": (
        {"dtype": "bfloat16", "gradient_checkpointing": True, "distributed": {"strategy": "fsdp"}}, 8),
    "16 GPUs HSDP (2 nodes x 8, shard_size 8): as the 8-GPU FSDP row": (
        {"mixed_precision": "bf16", "grad_dtype": "bfloat16", "gradient_checkpointing": True,
         "distributed": {"strategy": "fsdp"}}, 8),
}  # fmt: skip


def plan(batch: int = 4, length: int = 512) -> dict[str, dict[str, float]]:
    """The memory plan of docs/scaling.md: GB per GPU for Llama-3-8B, 3 objectives, ``batch`` × ``length``."""
    return {
        name: {k: round(v, 1) for k, v in arithmetic(opts, LLAMA3_8B, n, batch=batch, length=length).items()}
        for name, (opts, n) in PLANS.items()
    }


_TERMS = ("weights", "reference", "gradient_rows", "optimizer", "activations", "combined_copy", "total")


def markdown(results: dict) -> str:
    """The measured table (README, docs/scaling.md) from a results file."""
    head = "| case | processes | measured GB / process | arithmetic GB: " + " / ".join(_TERMS) + " | s / step |"
    lines = [head, "|" + "---|" * 5]
    for case, e in results["cases"].items():
        a = e["arithmetic_gb"]
        terms = " / ".join(f"{a.get(t, 0.0):.2f}" for t in _TERMS)
        lines.append(f"| {case} | {e['processes']} | {e['measured_gb']:.2f} | {terms} | {e['seconds_per_step']} |")
    return "\n".join(lines)


def plan_markdown() -> str:
    """The Llama-3-8B plan as a table (docs/scaling.md)."""
    lines = ["| set-up | " + " | ".join(_TERMS) + " |", "|" + "---|" * (len(_TERMS) + 1)]
    for name, terms in plan().items():
        lines.append(f"| {name} | " + " | ".join(f"{terms[t]:.1f}" for t in _TERMS) + " |")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(case: str, out_dir: Path) -> None:
    n = PROCESSES.get(case, 1)
    script = [str(Path(__file__).resolve()), "--worker", case, "--work-dir", str(out_dir)]
    if n == 1:
        cmd = [sys.executable, *script]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
        cmd = [*launcher, "--master_port", str(_free_port()), *script]
    # A fixed mmap threshold: glibc otherwise raises it after large frees and keeps freed tensors in the heap, so
    # RSS would count memory FSDP already released (the unsharded weights, each block's all-gather).
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1" if n > 1 else "2",
        "HF_HUB_OFFLINE": "1",
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true", help="ignore cached cases in --out")
    parser.add_argument("--plan", action="store_true", help="print the Llama-3-8B memory plan (arithmetic only)")
    parser.add_argument("--markdown", action="store_true", help="print the tables of --out and the plan, run nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.work_dir)
        return 0
    if args.plan:
        print(json.dumps(plan(), indent=2))
        return 0
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())) + "\n\n" + plan_markdown())
        return 0

    from mollm.core.atomic import atomic_write_json

    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
    results = {} if args.fresh or not args.out.is_file() else json.loads(args.out.read_text())
    cases = results.setdefault("cases", {})
    results["setting"] = {
        "model": "embedded SmolLM2-135M-Instruct",
        "objectives": M,
        "batch": BATCH,
        "max_length": LENGTH,
        "steps": STEPS,
        "optimizer": "adamw",
        "cpu_cores": os.cpu_count(),
        "measure": "peak RSS over steps 2-3 minus RSS before loading the model, per process",
    }
    for case in wanted:
        if case in cases:
            print(f"{case}: cached")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _launch(case, Path(tmp))
            ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob(f"{case}_rank*.json"))]
        n = len(ranks)
        entry = {
            "processes": n,
            "measured_gb_per_rank": [round(r["measured_gb"], 3) for r in ranks],
            "measured_gb": round(max(r["measured_gb"] for r in ranks), 3),
            "seconds_per_step": round(max(r["seconds_per_step"] for r in ranks), 2),
            "arithmetic_gb": {k: round(v, 3) for k, v in arithmetic(CASES[case], ranks[0]["shape"], n).items()},
            "shape": ranks[0]["shape"],
        }
        cases[case] = entry
        atomic_write_json(args.out, results)  # cache each finished case
        print(
            f"{case}: measured {entry['measured_gb']:.2f} GB/rank, arithmetic {entry['arithmetic_gb']['total']:.2f} GB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
