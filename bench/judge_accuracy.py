"""Benchmark: held-out accuracy of the light judge (MiniLM sentence embeddings + logistic regression) on PKU-SafeRLHF.

Trains the judge on the PKU-SafeRLHF sample in ``../shared/data`` with five split seeds (test split by prompt, 20 %),
and writes each seed's held-out accuracy, F1 and majority-class rate, plus their mean and spread, to
``bench/results/judge_accuracy.json``. The README quotes seed 0 and the mean.

Usage: ``python bench/judge_accuracy.py [--data ../shared/data/pku_saferlhf/sample.jsonl] [--seeds 0 1 2 3 4]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mollm.core.atomic import atomic_write_json
from mollm.evaluation.judge import train_judge

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pku_saferlhf" / "sample.jsonl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge_accuracy.json")
    args = parser.parse_args()
    per_seed = []
    for seed in args.seeds:
        r = train_judge(args.data, None, seed=seed)
        per_seed.append(
            {
                "seed": seed,
                "accuracy": r.accuracy,
                "f1": r.f1,
                "majority_rate": r.majority_rate,
                "precision": r.precision,
                "recall": r.recall,
                "n_test": r.n_test,
                "C": r.C,
            }
        )
    summary = {}
    for key in ("accuracy", "f1", "majority_rate"):
        values = [p[key] for p in per_seed]
        summary[key] = {"mean": statistics.mean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}
    result = {"benchmark": "judge_accuracy", "data": str(args.data), "per_seed": per_seed, "summary": summary}
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
