"""Helpers shared by issue #9's benchmark scripts (``bench/harmful.py``, ``bench/tofu.py``).

Both scripts train one run per grid point (method × learning rate × seed), cache a summary of its training log in
``OUT/points/NAME.json`` and its evaluation in ``OUT/evals/…``, and skip whatever is cached on a re-run. The helpers
here name the points, read and write that cache, run a point to the end (resuming an interrupted run), summarise its
training log, compute mean ± sd over seeds and draw the plots both scripts share. Nothing here knows about a data set
or a metric.

The scripts import this file as ``_bench`` (``bench/`` is put on ``sys.path`` by each script, so that importing a
script by its path, as the tests do, works too).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# --- the per-point cache ---------------------------------------------------------------------------------------


def point_name(method: str, lr: float, seed: int) -> str:
    """The name of a grid point: its run directory, ``points/NAME.json`` and its evaluations."""
    return f"{method}_lr{lr:g}_s{seed}"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` atomically (NaN/inf become null), creating the folder."""
    from mollm.core.atomic import atomic_write_json, json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json_safe(obj))


def read_cached(out: Path, kind: str, name: str) -> dict[str, Any] | None:
    """``out/kind/name`` as JSON, or None when it is not cached (yet)."""
    path = out / kind / name
    return json.loads(path.read_text()) if path.is_file() else None


def plain(obj: Any) -> Any:
    """A dataclass as a dict (anything else unchanged), for JSON."""
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else obj  # type: ignore[arg-type]


# --- running a point -------------------------------------------------------------------------------------------


def run_resumable(tree: dict[str, Any]) -> Path:
    """Run the config ``tree`` to its end unless it has ended already (its ``run.json`` is written when a run ends:
    completed, or stopped on non-finite steps); an interrupted run resumes from its checkpoint, anything else starts
    afresh. ``tree`` gets the ``resume``/``overwrite`` keys that were used. The checkpoints are deleted afterwards
    (1.6 GB each for the embedded model; the finished model is in ``model/``). Returns the run directory."""
    from mollm.engine.config import load_config
    from mollm.runs import run

    run_dir = Path(tree["output_dir"].format(name=tree["name"]))
    if not (run_dir / "run.json").is_file():
        tree["resume"] = (run_dir / "checkpoints").is_dir()
        tree["overwrite"] = not tree["resume"]
        run(load_config(tree), progress=False)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return run_dir


def log_summary(run_dir: Path, n_objectives: int, forget: str = "forget") -> dict[str, Any]:
    """What a run's training log says: steps, end status, median seconds per step, the ``forget`` objective's
    gradient-norm trajectory and maximum, the conflict probability (share of steps whose direction raised some
    objective to first order: the log's ``conflict``), the gradient-conflict probability (share of steps where two
    objectives' gradients had a negative cosine; both None for one objective), the last step's losses and the
    non-finite steps."""
    from mollm.engine.metrics_log import read_metrics

    rows, _ = read_metrics(run_dir)
    steps = [rec for _, rec in rows]
    forget_norms = [rec.get("grad_norms", {}).get(forget) for rec in steps]
    seconds = [rec["seconds"] for rec in steps if isinstance(rec.get("seconds"), (int, float))]
    return {
        "steps": len(steps),
        "status": json.loads((run_dir / "run.json").read_text()).get("status"),
        "seconds_per_step": statistics.median(seconds) if seconds else None,
        "forget_grad_norm": forget_norms,
        "forget_grad_norm_max": max((v for v in forget_norms if v is not None), default=None),
        "conflict_probability": (
            sum(bool(rec.get("conflict")) for rec in steps) / len(steps) if n_objectives > 1 and steps else None
        ),
        "gradient_conflict_probability": (
            sum(any(v < 0 for v in (rec.get("cosines") or {}).values()) for rec in steps) / len(steps)
            if n_objectives > 1 and steps else None
        ),
        "final_losses": steps[-1].get("losses") if steps else None,
        "non_finite_steps": sum(not rec.get("finite", True) for rec in steps),
    }


# --- numbers ---------------------------------------------------------------------------------------------------


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: ``digits`` significant digits, an em dash for a missing or non-finite value."""
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_stats(runs: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``{key: (mean, sd)}`` over the runs (flat metric dicts, one per seed) that have the key; keys no run has are
    left out."""
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = mean_spread(values)
    return out


def mean_sd_cells(stats: Mapping[str, tuple[float, float]], keys: Iterable[str], n_seeds: int) -> list[str]:
    """Table cells ``mean ± sd`` for ``keys`` ("—" where missing); with one seed just the mean, since a standard
    deviation of one run is not a measurement."""
    def cell(mean: float, sd: float) -> str:
        return f"{mean:.3g} ± {sd:.2g}" if n_seeds > 1 else f"{mean:.3g}"

    return [cell(*stats[k]) if k in stats else "—" for k in keys]


# --- plots -----------------------------------------------------------------------------------------------------


def chosen_points(
    methods: Sequence[str],
    grid: Mapping[str, Mapping[float, dict[str, Any] | None]],
    choose: Any,
    base: Mapping[str, Any],
    cached_point: Any,
    seeds: Sequence[int],
    metrics_key: str,
    keys: Sequence[str],
) -> Iterable[tuple[str, float | None, list[dict[str, Any]], dict[str, tuple[float, float]]]]:
    """For each method whose whole grid is cached: ``(method, chosen lr or None, the chosen point's cached seeds,
    {key: (mean, sd)} over them)``; ``choose(points, base)`` is the script's selection rule and
    ``cached_point(method, lr, seed)`` its cache reader."""
    for m in methods:
        done = [p for p in grid[m].values() if p is not None]
        if len(done) < len(grid[m]):
            continue
        chosen = choose(done, base)
        if not chosen["admissible"]:
            yield m, None, [], {}
            continue
        runs = [q for q in (cached_point(m, chosen["lr"], s) for s in seeds) if q is not None]
        yield m, chosen["lr"], runs, seed_stats([q[metrics_key] for q in runs], keys)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (110 dpi, tight); the figure is closed."""
    import io

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


_MARKERS = ("o", "s", "^", "D", "v", "P", "<", ">", "h", "p", "d", "H")
_COLOURS = tuple(f"C{i}" for i in range(10)) + ("navy", "gold")  # tab10, then two that none of it resembles


def method_styles(methods: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """One (colour, marker) per method, both distinct for up to 12 methods, so that the benchmarks' 11 stay apart in
    print and for colour-blind readers."""
    return {m: (_COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}


def tradeoff_scatter(
    ax: Any,
    grid: Sequence[Mapping[str, Any]],
    xkey: str,
    ykey: str,
    chosen: Mapping[str, float | None],
    styles: Mapping[str, tuple[Any, str]],
    *,
    minimize: tuple[bool, bool] = (True, True),
) -> None:
    """Every grid point (``{"method", "lr", "metrics"}``) at (``metrics[xkey]``, ``metrics[ykey]``) in its method's
    style (:func:`method_styles`): dominated points faded, each method's chosen point (``chosen[method]`` is its
    learning rate) large with a black edge, the Pareto front (in the ``minimize`` directions) as a staircase."""
    from mollm.reports import pareto_front

    pts = [(g["metrics"].get(xkey), g["metrics"].get(ykey), g) for g in grid]
    pts = [(x, y, g) for x, y, g in pts if x is not None and y is not None]
    front = pareto_front([(x, y) for x, y, _ in pts], minimize=minimize)
    for (x, y, g), on in zip(pts, front):
        star = chosen.get(g["method"]) == g["lr"]
        colour, marker = styles[g["method"]]
        ax.scatter(x, y, color=colour, marker=marker, s=110 if star else 30, alpha=1.0 if on or star else 0.4,
                   edgecolors="k" if star else "none", linewidths=1.2, zorder=3 if star else 2)
    line = sorted((x, y) for (x, y, _), on in zip(pts, front) if on)
    if line:  # the boundary of the dominated region: "post" when both axes are minimised, "pre" when maximised
        where = "post" if all(minimize) else "pre"
        ax.step([p[0] for p in line], [p[1] for p in line], where=where, color="k", lw=1, alpha=0.6, zorder=1)


def method_legend(ax: Any, styles: Mapping[str, tuple[Any, str]], extra: Sequence[Any] = (), **kwargs: Any) -> None:
    """A legend with one solid entry per method, one for "chosen point" and the ``extra`` handles after them."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="none", marker=mk, color=c, label=m) for m, (c, mk) in styles.items()]
    handles.append(Line2D([], [], ls="none", marker="o", markersize=9, markerfacecolor="white",
                          markeredgecolor="k", label="chosen point (large)"))
    ax.legend(handles=handles + list(extra), **kwargs)


def grad_norm_plot(out: Path, methods: Sequence[str], lrs: Sequence[float], seed: int = 0) -> bytes:
    """The forget objective's gradient norm per step (log scale), one panel per learning rate, one line per method,
    from the cached ``out/points/NAME.json`` of seed ``seed``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), squeeze=False, sharey=True)
    for ax, lr in zip(axes[0], lrs):
        for m in methods:
            t = read_cached(out, "points", f"{point_name(m, lr, seed)}.json")
            if t is not None:
                ax.plot(range(1, len(t["forget_grad_norm"]) + 1), t["forget_grad_norm"], label=m)
        ax.set_yscale("log")
        ax.set_title(f"lr {lr:g}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget objective's gradient norm")
    axes[0][-1].legend(fontsize=7)
    return png_bytes(fig)
