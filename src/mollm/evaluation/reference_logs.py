"""Readers for retain-model truth ratios: TOFU evaluation logs (``eval_log_forget.json``), our own results JSON, or a
plain JSON list of numbers — the reference side of forget quality."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_LOG_KEYS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "truth_ratio", "rougeL_recall")


class ReferenceLogError(ValueError):
    """A reference log that cannot be read; the message names the file and the field."""


def read_tofu_log(path: str | Path) -> dict[str, list[Any]]:
    """Read a TOFU evaluation log (``{metric: {"0": value, "1": ...}}``) into ``{metric: [value per item]}`` in item
    order (the order of the forget split). Every metric present is kept; ``truth_ratio`` is required."""
    p = Path(path)
    if not p.is_file():
        raise ReferenceLogError(f"{path}: file not found")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReferenceLogError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or "truth_ratio" not in raw:
        raise ReferenceLogError(f"{path}: expected a TOFU eval log, a JSON object with a 'truth_ratio' field")
    out: dict[str, list[Any]] = {}
    n_items: int | None = None
    for key, per_item in raw.items():
        if not isinstance(per_item, dict):
            raise ReferenceLogError(f"{path}: field {key!r} must map item indices to values")
        try:
            order = sorted(per_item, key=int)
        except ValueError as e:
            raise ReferenceLogError(f"{path}: field {key!r} has a non-integer item index ({e})") from e
        if [int(i) for i in order] != list(range(len(order))):
            raise ReferenceLogError(f"{path}: field {key!r} item indices are not 0..{len(order) - 1}")
        if n_items is None:
            n_items = len(order)
        elif len(order) != n_items:
            raise ReferenceLogError(f"{path}: field {key!r} has {len(order)} items, others have {n_items}")
        out[key] = [per_item[i] for i in order]
    for i, v in enumerate(out["truth_ratio"]):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ReferenceLogError(f"{path}: truth_ratio of item {i} must be a positive number, got {v!r}")
    return out


def load_reference_truth_ratios(source: str | Path | Sequence[float], *, suite: str | None = None) -> list[float]:
    """Per-item retain-model truth ratios from ``source``:

    - a list of numbers (returned as floats);
    - a TOFU eval log (``truth_ratio`` field, see :func:`read_tofu_log`);
    - a JSON list of numbers;
    - a results JSON written by :func:`mollm.evaluation.evaluate` (the per-item values of a ``truth_ratio`` or
      ``forget_quality`` metric; name the suite with ``suite`` when there are several).
    """
    if not isinstance(source, (str, Path)):
        values = [float(v) for v in source]
        if not values:
            raise ReferenceLogError("reference truth ratios: empty list")
        return values
    p = Path(source)
    if not p.is_file():
        raise ReferenceLogError(f"{source}: file not found (expected a TOFU eval log or a results JSON)")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReferenceLogError(f"{source}: not valid JSON ({e})") from e
    if isinstance(raw, list):
        if not raw or not all(isinstance(v, (int, float)) for v in raw):
            raise ReferenceLogError(f"{source}: expected a non-empty JSON list of numbers")
        return [float(v) for v in raw]
    if isinstance(raw, dict) and "truth_ratio" in raw and isinstance(raw["truth_ratio"], dict):
        return [float(v) for v in read_tofu_log(p)["truth_ratio"]]
    if isinstance(raw, dict) and isinstance(raw.get("suites"), dict):
        return _from_results(raw["suites"], suite, str(source))
    raise ReferenceLogError(f"{source}: neither a TOFU eval log, a JSON list of numbers, nor a mollm results JSON")


def _from_results(suites: dict[str, Any], suite: str | None, where: str) -> list[float]:
    found: dict[str, list[float]] = {}
    for name, metrics in suites.items():
        for metric in ("truth_ratio", "forget_quality"):
            entry = metrics.get(metric) if isinstance(metrics, dict) else None
            if isinstance(entry, dict) and isinstance(entry.get("per_item"), list):
                found.setdefault(name, [float(v) for v in entry["per_item"]])
    if suite is not None:
        if suite not in found:
            raise ReferenceLogError(f"{where}: suite {suite!r} has no per-item truth ratios (have: {sorted(found)})")
        return found[suite]
    if len(found) != 1:
        raise ReferenceLogError(
            f"{where}: expected exactly one suite with truth ratios, found {sorted(found)}; name one with suite="
        )
    return next(iter(found.values()))
