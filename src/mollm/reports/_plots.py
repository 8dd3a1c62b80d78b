"""PNG plots with matplotlib's Agg backend (no display needed); each function returns PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot import
import matplotlib.pyplot as plt  # noqa: E402

from mollm.reports._load import TrainingLog  # noqa: E402


def _png(fig: "plt.Figure") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _empty_note(ax: "plt.Axes", text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_series(
    steps: Sequence[float],
    series: dict[str, list[float]],
    title: str,
    ylabel: str,
    log: bool = False,
    conflict: Sequence[bool | None] | None = None,
) -> bytes:
    """One line per named series over steps; ``log`` uses a log y-axis (non-positive values dropped);
    ``conflict`` marks the steps whose update conflicted with some objective (red ticks along the bottom)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = False
    for name, values in sorted(series.items()):
        pts = [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and (v > 0 or not log)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, marker="." if len(pts) < 40 else None)
            drawn = True
    if log and drawn:
        ax.set_yscale("log")
    if conflict is not None:
        ax.axhline(0.0, color="black", linewidth=0.6)  # cosine < 0: the pair of objectives conflicts
        xs = [s for s, c in zip(steps, conflict) if c]
        if xs:
            ax.plot(
                xs,
                [0.02] * len(xs),
                "|",
                color="red",
                markersize=12,
                transform=ax.get_xaxis_transform(),
                label=f"conflict ({len(xs)} steps)",
            )
            drawn = True
    if not drawn:
        _empty_note(ax, "no data")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


def training_plots(log: TrainingLog) -> dict[str, tuple[str, bytes]]:
    """``{file_stem: (caption, png)}`` for the training curves present in ``log``."""
    plots: dict[str, tuple[str, bytes]] = {}
    if log.losses:
        plots["losses"] = ("Loss per objective", plot_series(log.steps, log.losses, "Loss per objective", "loss"))
    if log.grad_norms:
        plots["grad_norms"] = (
            "Gradient norm per objective (log scale)",
            plot_series(log.steps, log.grad_norms, "Gradient norm per objective", "‖g_i‖", log=True),
        )
    if log.coefficients:
        plots["coefficients"] = (
            "Aggregator coefficients",
            plot_series(log.steps, log.coefficients, "Aggregator coefficients", "c_i"),
        )
    if log.cosines or any(c is not None for c in log.conflict):
        plots["cosines"] = (
            "Pairwise gradient cosines; red ticks = steps whose update conflicts with some objective",
            plot_series(
                log.steps, log.cosines, "Pairwise cosines and conflicts", "cos(g_i, g_j)", conflict=log.conflict
            ),
        )
    if log.gc:
        plots["gc"] = (
            "First-order decrease per objective (G c)",
            plot_series(log.steps, log.gc, "First-order decrease per objective (G c)", "(G c)_i"),
        )
    return plots


def pareto_plot(
    labels: Sequence[str],
    xs: Sequence[float],
    ys: Sequence[float],
    front: Sequence[bool],
    x_label: str,
    y_label: str,
) -> bytes:
    """Scatter of runs with the Pareto front highlighted (red, joined in x order)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if not labels:
        _empty_note(ax, "no run has both metrics")
    others = [i for i, f in enumerate(front) if not f]
    on = sorted((i for i, f in enumerate(front) if f), key=lambda i: (xs[i], ys[i]))
    if others:
        ax.scatter([xs[i] for i in others], [ys[i] for i in others], color="gray", alpha=0.45, s=40, label="dominated")
    if on:
        ax.plot([xs[i] for i in on], [ys[i] for i in on], "-o", color="red", markersize=8, label="Pareto front")
    for lab, x, y in zip(labels, xs, ys):
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    # Perplexities of broken runs can be 100x the others: use a log axis when positive values span > 2 decades.
    for vals, setter in ((xs, ax.set_xscale), (ys, ax.set_yscale)):
        if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
            setter("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title("Trade-off between runs")
    ax.grid(alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    return _png(fig)
