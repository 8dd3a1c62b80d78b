"""Benchmark: does ``ds_mgda``'s preference α move the trade-off monotonically?

A `mollm sweep` over α_forget (the other objectives' α = 1) in two settings on the embedded SmolLM2-135M-Instruct:

* ``demo``: the demo's facts — the demo's fine-tuned target (built once), then the demo's MOLLM unlearning
  (UCE forget + KL + NLL retain); forget metric: forget-answer probability (lower = more forgotten), retain cost:
  retain-answer probability and general-knowledge NLL;
* ``pku``: the plain-template ``configs/mollm.yaml`` of its time (UCE on PKU-SafeRLHF unsafe answers + KL on TruthfulQA + mismatch retain),
  shortened to ``--pku-steps``; forget metric: forget-answer NLL (higher = more forgotten), retain cost: KL to the
  original on held-out TruthfulQA.

Per point it also reads the run's log: the mean first-order decrease of each objective per step ((G c)_i, the
quantity α sets directly) and the forget share of it. Monotone means: the metric moves the same way at every step up
the α grid. Runs live under ``--work`` (models are large; not committed); each finished point is cached there, so the
benchmark can be completed over several sittings. Writes ``bench/results/alpha_sweep.{json,md,png}``.

Usage: ``python bench/alpha_sweep.py [--settings demo,pku] [--alphas 0.25,0.5,1,2,4] [--pku-steps 30]``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


from mollm.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from mollm.engine.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# (metric key in eval/after.json, label, direction of "more forgetting" or "more cost")
SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {
        "forget": ("forget/probability", "forget answer probability", "down"),
        "costs": [("retain/probability", "retain answer probability", "down"), ("normal/nll", "general NLL", "up")],
    },
    "pku": {
        "forget": ("forget/nll", "forget (harmful) answer NLL", "up"),
        "costs": [("normal/kl", "KL to the original on TruthfulQA", "up"), ("harmful/harmful_rate", "harmful rate (keyword)", "down")],
    },
}


def _demo_tree(work: Path) -> dict[str, Any]:
    from mollm.demo import finetune_config, unlearn_config
    from mollm.engine.config import load_config
    from mollm.runs import run

    target = work / "demo_target"
    if not (target / "finetune" / "run.json").is_file():
        run(load_config({**finetune_config(target), "overwrite": True}))
    tree = unlearn_config(work, target / "finetune" / "model")
    tree["name"] = "alpha_demo"
    tree["sweep"] = {"x": "forget/probability", "y": "normal/nll"}
    tree["evaluation"] = {
        "before": False,
        "max_new_tokens": 12,
        "suites": {k: {"data": k, "limit": 24, "metrics": ["nll", "probability"]} for k in ("forget", "retain", "normal")},
    }
    return tree


def _pku_tree(steps: int) -> dict[str, Any]:
    # The plain-template configs/mollm.yaml of when this sweep was measured (make bench-harmful has since shipped
    # another), kept here so that a re-run measures the same thing.
    data = ROOT.parent / "shared" / "data"
    tree: dict[str, Any] = {
        "model": "embedded", "seed": 0, "max_length": 160, "format": {"kind": "plain"},
        "data": {"forget": f"pku:{data / 'pku_saferlhf' / 'sample.jsonl'}#unsafe",
                 "normal": f"truthfulqa:{data / 'truthfulqa' / 'TruthfulQA.csv'}#train"},
        "objectives": [{"name": "forget", "loss": "uce", "data": "forget", "batch_size": 4, "options": {"eps": 0.5}},
                       {"name": "kl", "loss": "kl", "data": "normal", "batch_size": 4},
                       {"name": "retain", "loss": "mismatch", "data": "forget", "batch_size": 4}],
        "aggregator": {"name": "ds_mgda"}, "optimizer": {"name": "adamw", "lr": 3e-5}, "grad_clip": 1.0,
        "output_dir": "runs/{name}",
    }
    tree.update(name="alpha_pku", steps=steps, checkpoint_every=10)
    tree["sweep"] = {"x": "forget/nll", "y": "normal/kl"}
    tree["evaluation"] = {
        "before": False,
        "max_new_tokens": 32,
        "suites": {
            "forget": {"data": "forget", "limit": 24, "metrics": ["nll"]},
            "harmful": {"data": tree["data"]["forget"], "limit": 24, "metrics": [{"name": "harmful_rate", "judge": "keyword"}]},
            "normal": {"data": f"truthfulqa:{data / 'truthfulqa' / 'TruthfulQA.csv'}#test", "limit": 24, "metrics": ["kl"]},
        },
    }
    return tree


def _decrease_shares(run_dir: Path) -> dict[str, float]:
    rows, _ = read_metrics(run_dir)
    sums: dict[str, float] = {}
    for _, rec in rows:
        for name, v in (rec.get("Gc") or {}).items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                sums[name] = sums.get(name, 0.0) + v / len(rows)
    total = sum(abs(v) for v in sums.values()) or 1.0
    return {f"mean_Gc/{k}": v for k, v in sums.items()} | {f"share_Gc/{k}": abs(v) / total for k, v in sums.items()}


def _monotone(values: list[float | None], direction: str) -> bool | None:
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    steps = [b - a for a, b in zip(values, values[1:])]
    return all(s > 0 for s in steps) if direction == "up" else all(s < 0 for s in steps)


def run_setting(name: str, tree: dict[str, Any], alphas: list[float], work: Path) -> dict[str, Any]:
    from mollm.sweep import run_sweep

    m = len(tree["objectives"])
    grid = {"aggregator.options.preference": [[a] + [1.0] * (m - 1) for a in alphas]}
    result = run_sweep(tree, grid=grid, output_dir=work / f"sweep_{name}")
    spec = SETTINGS[name]
    points = []
    for a, row in zip(alphas, result.rows):
        metrics = dict(row["metrics"])
        run_dir = Path(row["run_dir"])
        if (run_dir / "metrics.jsonl").is_file():
            metrics.update(_decrease_shares(run_dir))
        points.append({"alpha_forget": a, "status": row["status"], "metrics": metrics})
    forget_label = tree["objectives"][0].get("name", tree["objectives"][0]["loss"])
    keys = [spec["forget"], *spec["costs"], (f"share_Gc/{forget_label}", "forget share of the first-order decrease", "up")]
    monotone = {
        key: _monotone([p["metrics"].get(key) for p in points], direction) for key, _label, direction in keys
    }
    return {"points": points, "keys": [list(k) for k in keys], "monotone": monotone, "sweep_dir": str(result.sweep_dir)}


def _plot(results: dict[str, Any]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        alphas = [p["alpha_forget"] for p in res["points"]]
        for key, label, _direction in res["keys"]:
            ys = [p["metrics"].get(key) for p in res["points"]]
            if any(y is None for y in ys):
                continue
            lo, hi = min(ys), max(ys)
            scaled = [(y - lo) / (hi - lo) if hi > lo else 0.5 for y in ys]  # one axis for all: min-max scaled
            ax.plot(alphas, scaled, "-o", label=f"{label} [{lo:.3g} .. {hi:.3g}]")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("α_forget (other objectives' α = 1)")
        ax.set_ylabel("min-max scaled value")
        ax.set_title(f"{name}: ds_mgda preference sweep")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# ds_mgda preference sweep (α_forget; the others 1)", ""]
    for name, res in results.items():
        keys = res["keys"]
        lines += [f"## {name}", "", "| α_forget | status | " + " | ".join(k[1] for k in keys) + " |"]
        lines.append("|---|---|" + "---|" * len(keys))
        for p in res["points"]:
            cells = [f"{p['metrics'][k[0]]:.4g}" if p["metrics"].get(k[0]) is not None else "—" for k in keys]
            lines.append(f"| {p['alpha_forget']:g} | {p['status']} | " + " | ".join(cells) + " |")
        lines.append("| monotone? | | " + " | ".join(str(res["monotone"][k[0]]) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="demo,pku")
    parser.add_argument("--alphas", default="0.25,0.5,1,2,4")
    parser.add_argument("--pku-steps", type=int, default=30)
    parser.add_argument("--work", type=Path, default=ROOT.parent / "alpha_sweep_runs")
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    out_json = RESULTS / "alpha_sweep.json"
    results: dict[str, Any] = json.loads(out_json.read_text())["settings"] if out_json.is_file() else {}
    for name in args.settings.split(","):
        tree = _demo_tree(args.work) if name == "demo" else _pku_tree(args.pku_steps)
        results[name] = run_setting(name, tree, alphas, args.work)
        atomic_write_json(out_json, {"alphas": alphas, "settings": results})  # after each setting: resumable
    atomic_write_bytes(RESULTS / "alpha_sweep.png", _plot(results))
    atomic_write_text(RESULTS / "alpha_sweep.md", _markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
