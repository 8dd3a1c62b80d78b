"""Training-side metrics from a run's ``metrics.jsonl`` (one JSON object per step with ``step``, ``losses``,
``grad_norms``, ``conflict`` and ``Gc`` — the first-order decrease ⟨g_i, d⟩ of each objective)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mollm.core.errors import DataError
from mollm.engine.metrics_log import metrics_path, read_metrics

_REQUIRED = ("step", "losses", "grad_norms", "conflict", "Gc")


def _read_lines(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for where, row in read_metrics(path)[0]:
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing} (expected {list(_REQUIRED)})")
        for key in ("losses", "grad_norms", "Gc"):
            if not isinstance(row[key], dict):
                raise DataError(f"{where}: field {key!r} must be an object {{objective: number}}")
        rows.append(row)
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    """Per objective, its finite values over steps (None / NaN entries, e.g. a skipped objective, are left out)."""
    out: dict[str, list[float]] = {}
    for row in rows:
        for name, v in row[key].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.setdefault(name, []).append(float(v))
            else:
                out.setdefault(name, [])
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def training_metrics(run_dir: str | Path) -> dict[str, Any]:
    """Summarise a run's ``metrics.jsonl`` (``run_dir`` is the run folder or the file itself):

    - ``steps``: number of logged steps; ``conflict_probability``: fraction of steps whose update conflicts with some
      objective (⟨g_i, d⟩ < 0);
    - ``grad_norm_mean`` / ``grad_norm_max`` / ``grad_norm_last``: per objective;
    - ``first_order_decrease_mean``: per objective, the mean of ``Gc`` (predicted decrease per unit step);
    - ``loss_first`` / ``loss_last`` / ``loss_decrease`` (first - last) / ``loss_decrease_per_step``: per objective.

    Values are ``None`` for an objective with no finite entry.
    """
    path = metrics_path(run_dir)
    rows = _read_lines(path)
    if not rows:
        raise ValueError(f"{path}: no steps logged")
    rows.sort(key=lambda r: r["step"])
    grads, gc, losses = _series(rows, "grad_norms"), _series(rows, "Gc"), _series(rows, "losses")
    first = {k: (v[0] if v else None) for k, v in losses.items()}
    last = {k: (v[-1] if v else None) for k, v in losses.items()}
    decrease = {k: (first[k] - last[k] if v else None) for k, v in losses.items()}
    return {
        "steps": len(rows),
        "first_step": rows[0]["step"],
        "last_step": rows[-1]["step"],
        "conflict_probability": sum(bool(r["conflict"]) for r in rows) / len(rows),
        "grad_norm_mean": {k: _mean(v) for k, v in grads.items()},
        "grad_norm_max": {k: (max(v) if v else None) for k, v in grads.items()},
        "grad_norm_last": {k: (v[-1] if v else None) for k, v in grads.items()},
        "first_order_decrease_mean": {k: _mean(v) for k, v in gc.items()},
        "loss_first": first,
        "loss_last": last,
        "loss_decrease": decrease,
        "loss_decrease_per_step": {k: (decrease[k] / (len(v) - 1) if len(v) > 1 else None) for k, v in losses.items()},
    }
