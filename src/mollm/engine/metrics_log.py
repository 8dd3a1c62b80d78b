"""A run's step log, ``<run>/metrics.jsonl``: one JSON object per step (losses, gradient norms, cosines,
coefficients, G c, conflict), appended line by line as the run goes; the one reader every report uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mollm.core.atomic import append_jsonl, atomic_write_text
from mollm.data.jsonl import iter_jsonl

if TYPE_CHECKING:
    from mollm.engine.step import StepStats

METRICS_FILE = "metrics.jsonl"


def metrics_path(run_dir_or_file: str | Path) -> Path:
    """``RUN/metrics.jsonl`` for a run directory, or the file itself."""
    p = Path(run_dir_or_file)
    return p / METRICS_FILE if p.is_dir() else p


def step_metrics(stats: StepStats) -> dict[str, Any]:
    """One step's statistics keyed by objective label, the layout of a ``metrics.jsonl`` line (without ``step`` and
    ``lr``): ``losses``, ``grad_norms``, ``coefficients``, ``Gc`` (per objective), ``cosines`` (per pair ``a|b``),
    ``conflict``, ``direction_norm``, ``finite``, ``seconds`` (and ``bad_objective``, ``reason`` for a skipped step)."""
    d = stats.to_dict()
    names = d["names"]
    out: dict[str, Any] = {key: dict(zip(names, d[key])) for key in ("losses", "grad_norms", "coefficients")}
    out["Gc"] = dict(zip(names, d["decrease"]))
    out["cosines"] = {
        f"{a}|{b}": d["cosines"][i][j]
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if i < j and d["cosines"]
    }
    out.update(conflict=d["conflict"], direction_norm=d["direction_norm"], finite=d["finite"], seconds=d["seconds"])
    if not d["finite"]:
        out.update(bad_objective=d["bad_objective"], reason=d["reason"])
    return out


def scalar_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A step record flattened to named numbers for loggers (TensorBoard, the Trainer's): ``losses/forget``,
    ``Gc/retain``, ``cosines/forget|retain``, ``conflict`` (0 or 1), ...; ``None`` (non-finite) values are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}/{sub}"] = float(v)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def append_step(path: Path, record: dict[str, Any]) -> None:
    """Log one step (appended, flushed; the file is never rewritten while a run goes)."""
    append_jsonl(path, [record])


def read_metrics(run_dir_or_file: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The logged steps as ``("FILE:LINE", record)`` pairs, and warnings. A malformed line is a
    :class:`~mollm.core.errors.DataError` naming it — except a truncated *last* line (an interrupted run), which is
    skipped with a warning. A missing file is a ``FileNotFoundError``."""
    path = metrics_path(run_dir_or_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} (expected a run directory or its metrics file)")
    warnings: list[str] = []

    def truncated(where: str) -> None:
        warnings.append(f"{where}: truncated last line skipped (interrupted run?)")

    rows = list(iter_jsonl(path, expected="a JSON object (one step's statistics)", on_truncated_last=truncated))
    return rows, warnings


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop the lines past the checkpoint so the log matches an uninterrupted run (the one rewrite)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and _step(ln) <= after_step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", float("inf")))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return float("inf")  # a truncated line from the interrupted run: dropped
