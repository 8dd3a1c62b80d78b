"""Plots and a Markdown summary of G-effect results (rows are :meth:`GEffect.to_dict` dicts with ``step``)."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mollm.core.atomic import atomic_write_bytes

Row = dict[str, Any]


def _plt():
    import matplotlib  # noqa: PLC0415 (heavy; only needed for plots)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Save a figure atomically (temp file + rename)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def by_objective(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped by objective label, each list sorted by step."""
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[r["objective"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: (r.get("step") is None, r.get("step") or 0))
    return dict(out)


def plot_curves(rows: Sequence[Row], path: str | Path, *, title: str = "") -> Path:
    """``e_u`` and ``e_r`` per objective over steps (symmetric-log y axis: GA is orders of magnitude larger)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rs in by_objective(rows).items():
        steps = [r.get("step") or 0 for r in rs]
        for ax, key in zip(axes, ("e_u", "e_r")):
            ys = [r.get(key) for r in rs]
            if any(y is not None for y in ys):
                ax.plot(steps, [float("nan") if y is None else y for y in ys], marker="o", ms=3, label=name)
    for ax, label in zip(axes, ("unlearning G-effect e_u (forget)", "retaining G-effect e_r (retain)")):
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("step")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_heatmap(rows: Sequence[Row], path: str | Path, *, key: str = "e_r", fine: bool = False) -> Path:
    """Layer groups x steps heat-map of ``key`` for each objective (one panel each, a diverging colour scale).

    ``fine=False`` uses the coarse groups (embedding / shallow / middle / deep / final_norm / head).
    """
    import numpy as np  # noqa: PLC0415

    plt = _plt()
    objs = by_objective(rows)
    n = max(1, len(objs))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 4), squeeze=False)
    field = "per_group" if fine else "per_depth"
    for ax, (name, rs) in zip(axes[0], objs.items()):
        groups = list(rs[0][field])
        mat = np.array([[(r[field][g][key] or 0.0) if g in r[field] else 0.0 for r in rs] for g in groups])
        vmax = float(np.abs(mat).max()) or 1.0
        im = ax.imshow(mat, aspect="auto", cmap="RdBu", vmin=-vmax, vmax=vmax)
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        steps = [r.get("step") or 0 for r in rs]
        ax.set_xticks(range(len(steps)), steps, fontsize=7)
        ax.set_xlabel("step")
        ax.set_title(f"{name}: {key}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_samples(rows: Sequence[Row], path: str | Path) -> Path:
    """Per-forget-sample bars (first measured step of each objective that has sample effects): each sample's share
    of ``e_u`` and ``e_r``."""
    import numpy as np  # noqa: PLC0415

    plt = _plt()
    picked = [rs[0] for rs in by_objective(rows).values() if rs[0].get("samples")]
    picked = [r for r in picked if r["samples"].get("contrib_u")]
    n = max(1, len(picked))
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n + 1, 5), squeeze=False)
    for j, r in enumerate(picked):
        s = r["samples"]
        x = np.arange(len(s["contrib_u"]))
        axes[0][j].bar(x, s["contrib_u"], color="tab:red")
        axes[0][j].set_title(f"{r['objective']}: share of e_u", fontsize=9)
        if s.get("contrib_r"):
            axes[1][j].bar(x, s["contrib_r"], color="tab:blue")
        axes[1][j].set_title(f"{r['objective']}: share of e_r", fontsize=9)
        axes[1][j].set_xlabel("forget sample")
        for ax in (axes[0][j], axes[1][j]):
            ax.axhline(0.0, color="k", lw=0.6)
    return _save(fig, path)


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def summary_markdown(rows: Sequence[Row], *, title: str = "G-effect summary", checks: Sequence[Row] = ()) -> str:
    """A short Markdown report: per objective the first / last / mean G-effects, the ratio e_r/e_u and the layer
    group where |e_r| concentrates; the first-order checks if given."""
    lines = [f"# {title}", ""]
    objs = by_objective(rows)
    if objs:
        lines += [
            "| objective | steps | e_u (first) | e_r (first) | mean e_u | mean e_r | mean e_r / mean e_u | "
            "e_r mostly in | e_u mostly in |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, rs in objs.items():
            eu = [r["e_u"] for r in rs if r.get("e_u") is not None]
            er = [r["e_r"] for r in rs if r.get("e_r") is not None]
            mu = sum(eu) / len(eu) if eu else None
            mr = sum(er) / len(er) if er else None
            ratio = (mr / mu) if (mu and mr is not None) else None
            lines.append(
                f"| {name} | {len(rs)} | {_fmt(rs[0].get('e_u'))} | {_fmt(rs[0].get('e_r'))} | {_fmt(mu)} | {_fmt(mr)} | "
                f"{_fmt(ratio)} | {dominant_group(rs, 'e_r')} | {dominant_group(rs, 'e_u')} |"
            )
        tied = next((r.get("tied") for r in rows if r.get("tied")), None)
        lines += ["", f"Parameters analysed: {rows[0].get('n_params'):,}."]
        if tied:
            lines.append("Tied weights (counted once): " + "; ".join(tied) + ".")
        lines += [
            "",
            "Sign convention: e = <grad NLL(D), grad L_obj>; after one step of size eta the NLL changes by about "
            "-eta e, so e_u < 0 means forgetting and e_r < 0 means collateral damage on the retain data.",
        ]
    if checks:
        lines += [
            "",
            "## First-order check",
            "",
            "| objective | eta | predicted dNLL_f | measured | rel. err | "
            "predicted dNLL_r | measured | rel. err | passed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c['objective']} | {_fmt(c['eta'])} | {_fmt(c['predicted_du'])} | {_fmt(c['measured_du'])} | "
                f"{_fmt(c['rel_err_u'])} | {_fmt(c.get('predicted_dr'))} | {_fmt(c.get('measured_dr'))} | "
                f"{_fmt(c.get('rel_err_r'))} | {c['passed']} |"
            )
    return "\n".join(lines) + "\n"


def dominant_group(rows: Sequence[Row], key: str) -> str:
    """The coarse layer group with the largest summed |key| over ``rows``, with its share of the total |key|."""
    totals: dict[str, float] = defaultdict(float)
    for r in rows:
        for g, v in (r.get("per_depth") or {}).items():
            totals[g] += abs(v.get(key) or 0.0)
    whole = sum(totals.values())
    if not whole:
        return "—"
    g = max(totals, key=totals.__getitem__)
    return f"{g} ({100 * totals[g] / whole:.0f}%)"
