"""Reading a run directory for reports: evaluation JSON, config, training metrics."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mollm.core.errors import DataError
from mollm.engine.metrics_log import read_metrics

# Keys holding per-item lists etc. that are not metrics themselves.
_SKIP_KEYS = {"items", "per_item", "per_items", "values", "samples", "generations"}


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """Flatten ``{name: value | {"aggregate": value} | {sub: ...}}`` to ``{"a.b": float}``.

    A dict with an ``aggregate`` number contributes that number under its own name (its other keys are per-item detail);
    other dicts are recursed into with dotted names. Lists, strings and ``None`` are skipped. Booleans count as 0/1.
    """
    out: dict[str, float] = {}
    if not isinstance(obj, dict):
        return out
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if str(key) in _SKIP_KEYS:
            continue
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            agg = value.get("aggregate")
            if isinstance(agg, (int, float)) and not isinstance(agg, bool):
                out[name] = float(agg)
            else:
                out.update(flatten_metrics(value, prefix=f"{name}."))
    return out


def read_json_metrics(path: Path) -> dict[str, float] | None:
    """Flattened metrics of an eval JSON file, or ``None`` if it does not exist. Invalid JSON is an error."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{metric: value}}, got {type(data).__name__}")
    return flatten_metrics(data)


def read_eval_series(eval_dir: Path, last_step: int | None = None) -> tuple[list[int], dict[str, list[float]]]:
    """A run's evaluations over steps: ``before.json`` (step 0), ``step_N.json`` and ``after.json`` (``last_step``,
    or one past the last N). Returns the steps and, per flattened metric, its value at each step (NaN where absent)."""
    points: list[tuple[int, dict[str, float]]] = []
    before = read_json_metrics(eval_dir / "before.json")
    if before is not None:
        points.append((0, before))
    steps = sorted(
        (int(p.stem.split("_")[1]), p) for p in eval_dir.glob("step_*.json") if p.stem.split("_")[1].isdigit()
    )
    points += [(n, read_json_metrics(p) or {}) for n, p in steps]
    after = read_json_metrics(eval_dir / "after.json")
    if after is not None:
        points.append((last_step if last_step is not None else (points[-1][0] + 1 if points else 1), after))
    names = sorted({k for _, m in points for k in m})
    return [s for s, _ in points], {n: [m.get(n, float("nan")) for _, m in points] for n in names}


def read_config(path: Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` as a dict, or ``None`` if absent."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a YAML mapping at top level, got {type(data).__name__}")
    return data


def flatten_config(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``[("optimizer.lr", "1e-05"), ...]`` for a config summary table (lists shown inline, shortened)."""
    rows: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows.extend(flatten_config(v, f"{prefix}{k}."))
        return rows
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for i, x in enumerate(obj):
            rows.extend(flatten_config(x, f"{prefix}{i}."))
        return rows
    text = json.dumps(obj) if not isinstance(obj, str) else obj
    if len(text) > 120:
        text = text[:117] + "..."
    rows.append((prefix.rstrip("."), text))
    return rows


@dataclass
class TrainingLog:
    """``metrics.jsonl`` as column series indexed by step."""

    steps: list[float] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    grad_norms: dict[str, list[float]] = field(default_factory=dict)
    coefficients: dict[str, list[float]] = field(default_factory=dict)
    cosines: dict[str, list[float]] = field(default_factory=dict)
    gc: dict[str, list[float]] = field(default_factory=dict)
    conflict: list[bool | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def conflict_probability(self) -> float | None:
        """Fraction of steps whose update conflicts with some objective (steps without the flag excluded)."""
        known = [c for c in self.conflict if c is not None]
        return sum(known) / len(known) if known else None


_SERIES = {
    "losses": "losses",
    "grad_norms": "grad_norms",
    "coefficients": "coefficients",
    "cosines": "cosines",
    "Gc": "gc",
}


def _num(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def read_training_log(path: Path) -> TrainingLog | None:
    """Parse ``metrics.jsonl`` (``None`` if absent).

    A malformed line raises :class:`DataError` naming it — except a truncated *last* line (an interrupted run), which
    is skipped and recorded in ``warnings``. Non-numeric or non-finite values become NaN (gaps in the plots) and are
    counted.
    """
    if not path.is_file():
        return None
    log = TrainingLog()
    nonfinite = 0
    rows, log.warnings = read_metrics(path)
    for where, rec in rows:
        n = len(log.steps)
        step = rec.get("step", n)
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            raise DataError(f"{where}: field 'step' is {step!r}; expected a number")
        log.steps.append(float(step))
        for key, attr in _SERIES.items():
            values = rec.get(key)
            if values is None:
                values = {}
            if not isinstance(values, dict):
                kind = type(values).__name__
                raise DataError(f"{where}: field {key!r} is {kind}; expected an object {{name: number}}")
            table: dict[str, list[float]] = getattr(log, attr)
            for name, v in values.items():
                x = _num(v)
                if not math.isfinite(x):
                    nonfinite += 1
                    x = math.nan
                table.setdefault(str(name), [math.nan] * n).append(x)
            for series in table.values():  # names absent from this record get a gap
                if len(series) < n + 1:
                    series.append(math.nan)
        c = rec.get("conflict")
        log.conflict.append(bool(c) if isinstance(c, bool) else None)
    if nonfinite:
        log.warnings.append(f"{path}: {nonfinite} non-finite or non-numeric values shown as gaps")
    return log
