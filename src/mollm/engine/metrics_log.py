"""A run's step log, ``<run>/metrics.jsonl``: one JSON object per step (losses, gradient norms, cosines,
coefficients, G c, conflict), appended line by line as the run goes; the one reader every report uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mollm.core.atomic import append_jsonl, atomic_write_text
from mollm.data.jsonl import iter_jsonl

METRICS_FILE = "metrics.jsonl"


def metrics_path(run_dir_or_file: str | Path) -> Path:
    """``RUN/metrics.jsonl`` for a run directory, or the file itself."""
    p = Path(run_dir_or_file)
    return p / METRICS_FILE if p.is_dir() else p


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
