"""Benchmark: MOLLM against gradient ascent on harmful PKU-SafeRLHF answers, on the embedded model.

The MOLLM paper's claim, at this machine's scale: GA on the harmful answers damages the model (fluency and
normal-data KL), while MOLLM (UCE + KL + mismatch retain, DS-MGDA) lowers the harmful rate with far less damage.
Three runs from the shipped configs with the same learning rate and number of steps:

* ``ga``              — configs/ga.yaml (GA alone);
* ``ga_kl_mismatch``  — configs/ga_kl_mismatch.yaml (Yao et al.: GA + mismatch + KL, weighted sum);
* ``mollm``           — configs/mollm.yaml.

The first look, superseded by ``bench/harmful.py`` (``make bench-harmful``): its committed results ran the
plain-template configs shipped before that benchmark; the configs it reads now are that benchmark's chosen points.

Each run is evaluated after training (the original model once, before) on: harmful rate of greedy answers to the
PKU prompts (the light judge trained here on PKU labels, and the refusal-keyword baseline), fluency (perplexity of
the answers under the original model, n-gram entropy), and KL / perplexity on TruthfulQA (normal data).
Writes bench/results/mollm_vs_ga.{json,md} and mollm_vs_ga_pareto.png. ~15 min on 2 cores.

Usage: ``python bench/mollm_vs_ga.py [--steps 40] [--lr 2e-5] [--n-eval 48]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import mollm
from mollm.core.atomic import atomic_write_bytes
from mollm.evaluation import evaluate
from mollm.evaluation.judge import train_judge
from mollm.reports import pareto_front, pareto_plot

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METHODS = ("ga", "ga_kl_mismatch", "mollm")
HEADLINE = [
    ("harmful/judge", "harmful rate (trained judge)"),
    ("harmful/keyword", "harmful rate (keyword)"),
    ("harmful/fluency", "answer perplexity under the original (median)"),
    ("harmful/fluency.entropy_3", "answer 3-gram entropy"),
    ("harmful/fluency.degenerate_rate", "degenerate answers (repetition)"),
    ("normal/kl", "KL to the original on TruthfulQA"),
    ("normal/kl.perplexity", "TruthfulQA answer perplexity"),
]


def _suites(judge_dir: Path, n_eval: int) -> dict:
    return {
        "harmful": {
            "data": f"pku:{DATA / 'pku_saferlhf' / 'sample.jsonl'}#unsafe",
            "limit": n_eval,
            "metrics": [
                {"name": "harmful_rate", "judge": str(judge_dir), "as": "judge"},
                {"name": "harmful_rate", "judge": "keyword", "as": "keyword"},
                "fluency",
            ],
        },
        "normal": {
            "data": f"truthfulqa:{DATA / 'truthfulqa' / 'TruthfulQA.csv'}#test",
            "limit": n_eval,
            "metrics": ["kl"],
        },
    }


def _headline(results: dict) -> dict[str, float]:
    out = {}
    for key, _ in HEADLINE:
        path, _, sub = key.partition(".")
        suite, metric = path.split("/")
        agg = results["suites"][suite][metric]["aggregate"]
        out[key] = agg[sub or "value"]
    return out


def _pareto(evals: Path, png: Path) -> None:
    """Mean harmfulness score of the trained judge against KL to the original on normal data, from saved evals (the
    harmful *rate* is 0 for every method here, so the continuous score separates them)."""
    names, xs, ys = [], [], []
    for name in ("original", *METHODS):
        results = json.loads((evals / f"{name}.json").read_text())["suites"]
        names.append(name)
        xs.append(results["harmful"]["judge"]["aggregate"]["mean_score"])
        ys.append(results["normal"]["kl"]["aggregate"]["value"])
    front = pareto_front(list(zip(xs, ys)))
    x_label, y_label = "mean harmfulness score, trained judge (lower is better)", "KL to the original on TruthfulQA"
    atomic_write_bytes(png, pareto_plot(names, xs, ys, front, x_label, y_label))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--n-eval", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--replot", action="store_true", help="only redraw the Pareto plot from the saved evaluations")
    args = ap.parse_args()
    if args.replot:
        _pareto(args.out / "mollm_vs_ga_evals", args.out / "mollm_vs_ga_pareto.png")
        return
    os.chdir(ROOT)  # the shipped configs' data paths are relative to the repository root
    work = Path(tempfile.mkdtemp(prefix="mollm_vs_ga_"))
    t_start = time.time()
    judge = train_judge(DATA / "pku_saferlhf" / "sample.jsonl", work / "judge", seed=0)
    suites = _suites(work / "judge", args.n_eval)
    kw = {"max_new_tokens": args.max_new_tokens, "max_length": 160, "progress": False}
    evals = args.out / "mollm_vs_ga_evals"  # per-item generations, scores and labels of every model

    def _eval(model, name: str) -> dict[str, float]:
        results = evaluate(model, suites, work / f"eval_{name}", reference="embedded", **kw)
        evals.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / f"eval_{name}" / "results.json", evals / f"{name}.json")
        return _headline(results)

    table = {"original": _eval("embedded", "original")}
    seconds = {}
    for name in METHODS:
        config = mollm.load_config(
            ROOT / "configs" / f"{name}.yaml",
            [
                f"steps={args.steps}",
                f"optimizer.lr={args.lr}",
                f"output_dir={work}/{{name}}",
                "checkpoint_every=0",
                "evaluation.before=false",
                "evaluation.every=0",
                "evaluation.after=false",  # evaluated below with the comparison suites
            ],
        )
        t0 = time.time()
        result = mollm.unlearn(config, progress=False)
        seconds[name] = round(time.time() - t0, 1)
        table[name] = _eval(result.model_dir, name)
        print(name, table[name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    _pareto(evals, args.out / "mollm_vs_ga_pareto.png")
    result = {
        "benchmark": "mollm_vs_ga",
        "steps": args.steps,
        "lr": args.lr,
        "n_eval": args.n_eval,
        "judge_heldout_accuracy": judge.accuracy,
        "table": table,
        "train_seconds": seconds,
        "total_seconds": round(time.time() - t_start, 1),
    }
    lines = ["| metric | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for key, label in HEADLINE:
        lines.append(f"| {label} | " + " | ".join(f"{table[m][key]:.3g}" for m in table) + " |")
    md = (
        f"# MOLLM vs GA on PKU-SafeRLHF (embedded SmolLM2-135M, {args.steps} steps, lr {args.lr})\n\n"
        + "\n".join(lines)
        + "\n"
    )
    (args.out / "mollm_vs_ga.md").write_text(md)
    (args.out / "mollm_vs_ga.json").write_text(json.dumps(result, indent=2) + "\n")
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
