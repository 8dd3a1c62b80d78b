"""Readers for retain-model references: per-item truth ratios (the reference side of forget quality) from TOFU
evaluation logs (``eval_log_forget.json``), our own results JSON or a plain JSON list of numbers, and membership
inference AUCs (the reference side of privleak) from a results JSON; each with the base model it comes from, so that
a metric can refuse to compare two models that descend from different pretrained models.

Where a reference's base model comes from:

- a results JSON written by :func:`mollm.evaluation.evaluate`: its ``base_model`` field (recorded since this field
  exists; older files have none);
- a TOFU eval log: TOFU's format has no such field; a file in that format is taken as a log of the TOFU authors'
  Phi-1.5 models (:data:`TOFU_LOG_BASE`, ``microsoft/phi-1_5``), unless its path names Llama (TOFU's other model
  family, whose base the log cannot tell), which leaves the base unknown;
- a list of numbers (in a file or inline): unknown.

The user can state a reference's base (``reference_base``) where it is unknown or inferred, or force a comparison
(``allow_other_base``); see :func:`check_reference_base`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOFU_LOG_BASE = "microsoft/phi-1_5"

_LOG_KEYS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "truth_ratio", "rougeL_recall")


class ReferenceLogError(ValueError):
    """A reference log that cannot be read; the message names the file and the field."""


class ReferenceBaseError(ReferenceLogError):
    """A reference from another base model than the evaluated one (or from an unknown one); the message names both."""


@dataclass(frozen=True)
class ReferenceValues:
    """Reference values with their provenance: ``base`` is the base model they were computed with (None: unknown),
    ``recorded`` whether a mollm results JSON recorded it (else it is inferred or unknown), ``base_from`` says how it
    was found, ``where`` names the source in messages, ``options`` are the options of the metric that produced the
    values (results JSON only)."""

    values: Any  # list[float] (truth ratios), or float / dict[str, float] (AUC per attack)
    base: str | None
    base_from: str
    where: str
    recorded: bool = False
    options: dict[str, Any] = field(default_factory=dict)


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
    """Per-item retain-model truth ratios from ``source`` (the values of :func:`read_reference_truth_ratios`)."""
    return read_reference_truth_ratios(source, suite=suite).values


def read_reference_truth_ratios(source: str | Path | Sequence[float], *, suite: str | None = None) -> ReferenceValues:
    """Per-item retain-model truth ratios from ``source``, with the base model they come from:

    - a list of numbers (returned as floats; base unknown);
    - a TOFU eval log (``truth_ratio`` field, see :func:`read_tofu_log`; base inferred, see the module docstring);
    - a JSON list of numbers (base unknown);
    - a results JSON written by :func:`mollm.evaluation.evaluate` (the per-item values of a ``truth_ratio`` or
      ``forget_quality`` metric; name the suite with ``suite`` when there are several; base: its ``base_model``).
    """
    if not isinstance(source, (str, Path)):
        values = [float(v) for v in source]
        if not values:
            raise ReferenceLogError("reference truth ratios: empty list")
        return ReferenceValues(values, None, "a list of numbers records no base model", "(a list of numbers)")
    p = Path(source)
    raw = _read_json_file(p, "a TOFU eval log or a results JSON")
    where = str(source)
    if isinstance(raw, list):
        if not raw or not all(isinstance(v, (int, float)) for v in raw):
            raise ReferenceLogError(f"{source}: expected a non-empty JSON list of numbers")
        return ReferenceValues([float(v) for v in raw], None, "a JSON list of numbers records no base model", where)
    if isinstance(raw, dict) and "truth_ratio" in raw and isinstance(raw["truth_ratio"], dict):
        base, how = tofu_log_base(p)
        return ReferenceValues([float(v) for v in read_tofu_log(p)["truth_ratio"]], base, how, where)
    if isinstance(raw, dict) and isinstance(raw.get("suites"), dict):
        base, how = _results_base(raw)
        return ReferenceValues(_from_results(raw["suites"], suite, where), base, how, where, recorded=base is not None)
    raise ReferenceLogError(f"{source}: neither a TOFU eval log, a JSON list of numbers, nor a mollm results JSON")


def read_reference_mia_auc(
    source: str | Path | float | Mapping[str, float], *, suite: str | None = None
) -> ReferenceValues:
    """A retain model's membership-inference AUCs (``{attack: auc}``, or one number for every attack) from
    ``source``: a number or a ``{attack: auc}`` mapping (base unknown), or a results JSON written by
    :func:`mollm.evaluation.evaluate` holding a ``mia`` result (its ``auc_*`` aggregates; name the suite with
    ``suite`` when there are several; base: its ``base_model``; ``options``: that ``mia``'s options)."""
    if isinstance(source, bool):
        raise ReferenceLogError(f"retain AUC: expected a number, a mapping or a results JSON, got {source!r}")
    if isinstance(source, (int, float)):
        return ReferenceValues(float(source), None, "a number records no base model", f"retain_auc={source}")
    if isinstance(source, Mapping):
        values = {str(k): float(v) for k, v in source.items()}
        return ReferenceValues(values, None, "a mapping of numbers records no base model", f"retain_auc={values}")
    p = Path(source)
    where = str(source)
    raw = _read_json_file(p, "a results JSON with a 'mia' result")
    if not (isinstance(raw, dict) and isinstance(raw.get("suites"), dict)):
        raise ReferenceLogError(f"{source}: not a mollm results JSON (no 'suites'); expected one with a 'mia' result")
    found: dict[str, dict[str, Any]] = {}
    for name, metrics in raw["suites"].items():
        for key, entry in metrics.items() if isinstance(metrics, dict) else []:
            if isinstance(entry, dict) and (key == "mia" or entry.get("name") == "mia"):
                found.setdefault(name, entry)
    entry = _pick(found, suite, where, "a 'mia' result")
    agg = entry.get("aggregate") if isinstance(entry.get("aggregate"), dict) else {}
    values = {k.removeprefix("auc_"): float(v) for k, v in agg.items() if k.startswith("auc_") and v is not None}
    if not values:
        raise ReferenceLogError(f"{source}: its 'mia' result has no auc_* aggregates")
    options = dict(entry["options"]) if isinstance(entry.get("options"), dict) else {}
    base, how = _results_base(raw)
    return ReferenceValues(values, base, how, where, recorded=base is not None, options=options)


def tofu_log_base(path: str | Path) -> tuple[str | None, str]:
    """The base model of a TOFU eval log and how it was found: TOFU logs record none, so a log is taken as one of
    the TOFU authors' Phi-1.5 models (``microsoft/phi-1_5``) unless its path names Llama (then: unknown)."""
    if "llama" in str(path).lower():
        return None, "a TOFU eval log records no base model, and its path names Llama, TOFU's other model family"
    return TOFU_LOG_BASE, "inferred from TOFU's eval log format, which records no base model: the TOFU authors' Phi-1.5"


def same_base(a: str, b: str) -> bool:
    """Whether two base-model identities name the same model (hub ids are case-insensitive)."""
    return a.strip().lower() == b.strip().lower()


def check_reference_base(
    metric: str,
    model_base: str,
    ref: ReferenceValues,
    *,
    reference_base: str | None = None,
    allow_other_base: bool = False,
) -> str | None:
    """Refuse (:class:`ReferenceBaseError`, naming both models) a reference from another base model than
    ``model_base`` or from an unknown one; return the reference's base.

    ``reference_base`` states the reference's base (any model spec: a hub id, ``embedded``, a run directory ...;
    resolved with :func:`mollm.models.loading.base_model_identity`); it replaces an inferred base (a TOFU log's) and
    gives one to a source that records none, but must agree with a base recorded in a results JSON. With
    ``allow_other_base=True`` nothing is refused: a mismatch or an unknown base only warns.
    """
    base, how = ref.base, ref.base_from
    if reference_base is not None:
        from mollm.models.loading import base_model_identity

        stated = base_model_identity(reference_base)
        if ref.recorded and base is not None and not same_base(stated, base) and not allow_other_base:
            raise ReferenceBaseError(
                f"metric {metric!r}: reference_base: {reference_base!r} ({stated!r}) contradicts the base model "
                f"{base!r} {how}; remove reference_base or point the metric at the right reference"
            )
        base, how = stated, f"stated with reference_base: {reference_base!r}"
    if base is None:
        msg = (
            f"metric {metric!r}: the reference {ref.where} has no known base model ({how}), so mollm cannot check "
            f"that it comes from the evaluated model's base model {model_base!r}; name the reference's base with "
            f"reference_base: (e.g. reference_base: {model_base}, or the retain model's run directory), or set "
            f"allow_other_base: true to compare anyway"
        )
        _refuse_unless_forced(msg, allow_other_base)
        return None
    if not same_base(base, model_base):
        msg = (
            f"metric {metric!r}: the reference {ref.where} comes from base model {base!r} ({how}), but the evaluated "
            f"model descends from {model_base!r}; a comparison across base models means nothing. Use a retain "
            f"model fine-tuned from {model_base!r} (for TOFU: configs/finetune_tofu_retain.yaml), state the "
            f"reference's base with reference_base: if {base!r} is wrong, or set allow_other_base: true to compare "
            f"anyway"
        )
        _refuse_unless_forced(msg, allow_other_base)
    return base


def _refuse_unless_forced(msg: str, allow_other_base: bool) -> None:
    if not allow_other_base:
        raise ReferenceBaseError(msg)
    warnings.warn(f"{msg} (allow_other_base is true: comparing anyway)", stacklevel=4)


def _read_json_file(p: Path, expected: str) -> Any:
    if not p.is_file():
        raise ReferenceLogError(
            f"{p}: file not found (expected {expected}; a results JSON is written by `mollm eval`: evaluate the "
            "retain model first)"
        )
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReferenceLogError(f"{p}: not valid JSON ({e})") from e


def _results_base(raw: Mapping[str, Any]) -> tuple[str | None, str]:
    base = raw.get("base_model")
    if isinstance(base, str) and base.strip():
        return base, "recorded in its base_model field"
    return None, "a results JSON without a base_model field: written before mollm recorded it, or by hand"


def _pick(found: dict[str, Any], suite: str | None, where: str, what: str) -> Any:
    if suite is not None:
        if suite not in found:
            raise ReferenceLogError(f"{where}: suite {suite!r} has no {what} (have: {sorted(found)})")
        return found[suite]
    if not found:
        raise ReferenceLogError(f"{where}: no suite has {what}")
    if len(found) != 1:
        raise ReferenceLogError(f"{where}: several suites have {what} ({sorted(found)}); pick one with retain_suite:")
    return next(iter(found.values()))


def _from_results(suites: dict[str, Any], suite: str | None, where: str) -> list[float]:
    found: dict[str, list[float]] = {}
    for name, metrics in suites.items():
        for key, entry in metrics.items() if isinstance(metrics, dict) else []:
            is_tr = key in ("truth_ratio", "forget_quality") or (
                isinstance(entry, dict) and entry.get("name") in ("truth_ratio", "forget_quality")
            )
            if is_tr and isinstance(entry, dict) and isinstance(entry.get("per_item"), list):
                found.setdefault(name, [float(v) for v in entry["per_item"]])
    if suite is not None:
        if suite not in found:
            raise ReferenceLogError(f"{where}: suite {suite!r} has no per-item truth ratios (have: {sorted(found)})")
        return found[suite]
    if len(found) != 1:
        raise ReferenceLogError(
            f"{where}: expected exactly one suite with truth ratios, found {sorted(found)}; pick one with "
            "reference_suite:"
        )
    return next(iter(found.values()))
