"""Several runs side by side, with a trade-off (Pareto) plot of two metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from mollm.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from mollm.reports._load import read_json_metrics, read_training_log
from mollm.reports.run_report import format_value, md_table, render_html

__all__ = ["pareto_front", "metric_direction", "compare_runs", "lookup_metric"]

Direction = Literal["min", "max"]

# Name fragments deciding whether lower or higher is better (checked on the lower-cased dotted name, "min" list first).
_LOWER_BETTER = ("harmful", "perplexity", "ppl", "nll", "loss", "kl", "degenerate", "privleak", "extraction", "refusal")
_HIGHER_BETTER = ("quality", "utility", "accuracy", "f1", "entropy", "rouge", "probability", "truth_ratio", "auc")


def metric_direction(name: str) -> Direction:
    """Guess whether lower (``"min"``) or higher (``"max"``) is better for a metric name; unknown names → ``"min"``.

    Forget-set ROUGE / probability (names containing ``forget``) are ``"min"``: less recall of forgotten data is better.
    Pass an explicit direction to :func:`compare_runs` when the guess is wrong.
    """
    n = name.lower()
    if "forget" in n and ("rouge" in n or "prob" in n):
        return "min"
    if any(k in n for k in _LOWER_BETTER):
        return "min"
    if any(k in n for k in _HIGHER_BETTER):
        return "max"
    return "min"


def pareto_front(points: Sequence[tuple[float, float]], minimize: tuple[bool, bool] = (True, True)) -> list[bool]:
    """``True`` for each point no other point dominates.

    ``q`` dominates ``p`` when ``q`` is at least as good in both coordinates and strictly better in one ("good" per
    ``minimize``). Equal points do not dominate each other (both stay on the front). Points with a NaN are never on it.
    """
    signs = (1.0 if minimize[0] else -1.0, 1.0 if minimize[1] else -1.0)
    pts = [(signs[0] * x, signs[1] * y) for x, y in points]
    ok = [math.isfinite(x) and math.isfinite(y) for x, y in pts]
    front = []
    for i, (x, y) in enumerate(pts):
        if not ok[i]:
            front.append(False)
            continue
        dominated = any(
            ok[j] and xj <= x and yj <= y and (xj < x or yj < y) for j, (xj, yj) in enumerate(pts) if j != i
        )
        front.append(not dominated)
    return front


def lookup_metric(metrics: dict[str, float], name: str) -> float | None:
    """``metrics[name]``, else the one metric whose name ends with ``.name`` or ``/name``; ``None`` if there is none.

    Several suffix matches are an error listing them (say which one, e.g. ``forget.harmful_rate``).
    """
    if name in metrics:
        return metrics[name]
    hits = [k for k in metrics if k.endswith(("." + name, "/" + name))]
    if len(hits) > 1:
        raise ValueError(f"metric {name!r} is ambiguous: it matches {sorted(hits)}; give the full dotted name")
    return metrics[hits[0]] if hits else None


def _labels(runs: Sequence[Path]) -> list[str]:
    names = [r.name or str(r) for r in runs]
    seen: dict[str, int] = {}
    out = []
    for r, n in zip(runs, names):
        if names.count(n) > 1:  # same folder name in different places: prefix the parent
            n = f"{r.parent.name}/{n}"
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def compare_runs(
    runs: Sequence[Path | str],
    out: Path | str,
    x_metric: str,
    y_metric: str,
    x_direction: Direction | None = None,
    y_direction: Direction | None = None,
) -> Path:
    """Compare runs: a table of every metric (from ``eval/after.json``, else ``eval/before.json``) side by side, and a
    scatter of ``x_metric`` against ``y_metric`` with the Pareto front highlighted.

    Writes ``compare.html`` (self-contained), ``compare.md``, ``pareto.png`` and ``compare.json`` (values, directions,
    front membership) into the folder ``out``; returns the HTML path. Directions default to :func:`metric_direction`.
    """
    if not runs:
        raise ValueError("compare_runs: no runs given")
    run_paths = [Path(r) for r in runs]
    for r in run_paths:
        if not r.is_dir():
            raise FileNotFoundError(f"compare_runs: run directory {r} not found")
    for d, nm in ((x_direction, "x_direction"), (y_direction, "y_direction")):
        if d not in (None, "min", "max"):
            raise ValueError(f"compare_runs: {nm}={d!r}; expected 'min' or 'max'")
    xd: Direction = x_direction or metric_direction(x_metric)
    yd: Direction = y_direction or metric_direction(y_metric)
    out_dir = Path(out)
    labels = _labels(run_paths)

    metrics: list[dict[str, float]] = []
    sources: list[str] = []
    notes: list[str] = []
    for lab, r in zip(labels, run_paths):
        after = read_json_metrics(r / "eval" / "after.json")
        before = read_json_metrics(r / "eval" / "before.json")
        if after is not None:
            m, src = dict(after), "after"
        elif before is not None:
            m, src = dict(before), "before"
            notes.append(f"{lab}: no eval/after.json; using eval/before.json")
        else:
            m, src = {}, "none"
            notes.append(f"{lab}: no evaluation results")
        log = read_training_log(r / "metrics.jsonl")
        if log is not None and log.conflict_probability is not None:
            m.setdefault("training.conflict_probability", log.conflict_probability)
        if log is not None and len(log):
            m.setdefault("training.steps", float(len(log)))
        metrics.append(m)
        sources.append(src)

    xs = [lookup_metric(m, x_metric) for m in metrics]
    ys = [lookup_metric(m, y_metric) for m in metrics]
    plotted = [i for i in range(len(run_paths)) if xs[i] is not None and ys[i] is not None]
    for i in range(len(run_paths)):
        if i not in plotted:
            missing = [n for n, v in ((x_metric, xs[i]), (y_metric, ys[i])) if v is None]
            notes.append(f"{labels[i]}: not in the trade-off plot (missing {', '.join(missing)})")
    front_sub = pareto_front([(xs[i], ys[i]) for i in plotted], (xd == "min", yd == "min"))  # type: ignore[misc]
    on_front = [False] * len(run_paths)
    for k, i in enumerate(plotted):
        on_front[i] = front_sub[k]

    arrow = {"min": "↓ better", "max": "↑ better"}
    x_label, y_label = f"{x_metric} ({arrow[xd]})", f"{y_metric} ({arrow[yd]})"
    from mollm.reports._plots import pareto_plot

    png = pareto_plot(
        [labels[i] for i in plotted],
        [float(xs[i]) for i in plotted],  # type: ignore[arg-type]
        [float(ys[i]) for i in plotted],  # type: ignore[arg-type]
        front_sub,
        x_label,
        y_label,
    )
    atomic_write_bytes(out_dir / "pareto.png", png)

    # Trade-off table: one row per run; then the full metric table: one row per metric, one column per run.
    trade_header = ["run", x_label, y_label, "Pareto front", "metrics from"]
    trade_rows = [
        [labels[i], format_value(xs[i]), format_value(ys[i]), "yes" if on_front[i] else "no", sources[i]]
        for i in range(len(run_paths))
    ]
    trade_classes = ["front" if f else "" for f in on_front]
    names = sorted(set().union(*[set(m) for m in metrics]))
    full_header = ["metric", *labels]
    full_rows = [[n, *[format_value(m.get(n)) for m in metrics]] for n in names]

    title = f"mollm comparison of {len(run_paths)} runs"
    blocks: list[tuple[str, Any]] = [
        ("h2", "Trade-off"),
        ("table", (trade_header, trade_rows, trade_classes)),
        ("img", (f"{y_metric} against {x_metric}; Pareto front (non-dominated runs) in red", png)),
    ]
    blocks += [("warn", n) for n in notes]
    blocks += [("h2", "All metrics"), ("table", (full_header, full_rows))]
    blocks += [("p", f"{lab}: {r.resolve()}") for lab, r in zip(labels, run_paths)]
    md = [
        f"# {title}",
        "",
        "## Trade-off",
        "",
        md_table(trade_header, trade_rows),
        "",
        "![Pareto plot](pareto.png)",
        "",
        *[f"> {n}\n" for n in notes],
        "## All metrics",
        "",
        md_table(full_header, full_rows) if names else "No metrics found in any run.",
        "",
    ]
    atomic_write_json(
        out_dir / "compare.json",
        {
            "x_metric": x_metric,
            "y_metric": y_metric,
            "x_direction": xd,
            "y_direction": yd,
            "runs": [
                {
                    "label": labels[i],
                    "path": str(run_paths[i]),
                    "x": xs[i],
                    "y": ys[i],
                    "pareto": on_front[i],
                    "source": sources[i],
                    "metrics": {k: v for k, v in metrics[i].items() if math.isfinite(v)},
                }
                for i in range(len(run_paths))
            ],
            "notes": notes,
        },
    )
    atomic_write_text(out_dir / "compare.md", "\n".join(md).rstrip() + "\n")
    return atomic_write_text(out_dir / "compare.html", render_html(title, blocks))
