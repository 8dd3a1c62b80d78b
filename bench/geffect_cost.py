"""Benchmark: cost of one per-layer G-effect against one plain unlearning step, on the embedded model.

On the embedded SmolLM2-135M-Instruct with 4 TOFU forget and 4 retain items (max 64 tokens), it times, round-robin in
one process with the order rotating every round (the machine is shared and noisy), after a warm-up round:

* ``plain``:   one GA unlearning step — forward, backward, SGD update (lr 0, so the weights stay the same);
* ``geffect``: :func:`mollm.geffect.compute_geffects` for GA with forget and retain batches, per-layer groups, no
  per-sample effects or implicit weights — 3 forward/backward passes (objective, forget NLL, retain NLL) and the
  per-parameter inner products;
* ``three_backward``: three plain forward/backward passes, the floor the issue's "about 3 backward passes" names.

Reports per-round paired ratios' medians. Usage: ``python bench/geffect_cost.py [--reps 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mollm.core.atomic import atomic_write_json
from mollm.data.encode import PromptFormat, encode_batch
from mollm.data.readers import read_tofu
from mollm.geffect import compute_geffects, param_groups
from mollm.models.loading import load_model
from mollm.objectives import get as get_objective

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tofu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "geffect_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model()
    fmt = PromptFormat()
    forget = encode_batch(read_tofu(DATA / "forget10.json", limit=4), tok, fmt, 64)
    retain = encode_batch(read_tofu(DATA / "retain90.json", limit=4), tok, fmt, 64)
    ga, nll = get_objective("ga"), get_objective("nll")
    groups = param_groups(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def plain() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        ga(model, forget).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def geffect() -> None:
        compute_geffects(model, {"ga": ga}, forget, retain, groups=groups, weights=False)

    def three_backward() -> None:
        model.train()
        for loss_fn, batch in ((ga, forget), (nll, forget), (nll, retain)):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
        optimizer.zero_grad(set_to_none=True)

    methods = {"plain": plain, "geffect": geffect, "three_backward": three_backward}
    names = list(methods)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.reps + 1):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            t0 = time.perf_counter()
            methods[name]()
            if rnd > 0:  # round 0 is the warm-up
                seconds[name].append(time.perf_counter() - t0)
    ratio = {
        f"{a}_vs_plain": statistics.median(x / p for x, p in zip(seconds[a], seconds["plain"]))
        for a in ("geffect", "three_backward")
    }
    ratio["geffect_vs_three_backward"] = statistics.median(
        g / t for g, t in zip(seconds["geffect"], seconds["three_backward"])
    )
    result = {
        "benchmark": "geffect_cost",
        "setting": {
            "model": "SmolLM2-135M-Instruct (embedded, float32)",
            "forget": "tofu forget10[:4]",
            "retain": "tofu retain90[:4]",
            "max_length": 64,
            "reps": args.reps,
            "threads": args.threads,
        },
        "ratios": ratio,
        "median_seconds": {n: statistics.median(v) for n, v in seconds.items()},
        "seconds": seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
    }
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
