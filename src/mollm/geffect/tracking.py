"""G-effects over time: a callback for a running unlearning loop, and a pass over saved checkpoints."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mollm.core.atomic import append_jsonl
from mollm.data.jsonl import iter_jsonl
from mollm.geffect.core import GEffect, GradEMA, _resolve_objectives, compute_geffects
from mollm.geffect.groups import ParamGroups, param_groups
from mollm.objectives.base import Batch

JSONL_NAME = "geffect.jsonl"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a G-effect JSON-Lines file; a malformed line is an error naming the file and line."""
    return [row for _, row in iter_jsonl(path, expected="a JSON object (one G-effect)")]


class GEffectCallback:
    """Compute G-effects every ``every`` steps of an unlearning run and append them to ``<out_dir>/geffect.jsonl``.

    Usage in a training loop::

        cb = GEffectCallback(["ga", "npo"], forget_batch, retain_batch, every=10, out_dir=run_dir)
        for step in range(steps):
            ...                                   # the optimiser step
            cb.on_step(step, model, reference)

    Each measured step appends one JSON line per objective (:meth:`GEffect.to_dict`, with ``step``). The model's
    ``.grad`` buffers and train/eval mode are left untouched. Costs ``2 + K`` backward passes per measured step.

    Args:
        objectives: names, Objective instances, or a mapping label -> Objective.
        forget_batch / retain_batch: fixed probe batches (the same every step, so the curves are comparable).
        every: measure when ``step % every == 0``.
        out_dir: the run directory.
        ema: smooth gradients across measured steps with the paper's EMA (0.6 old + 0.4 new).
        per_sample / weights: passed to :func:`compute_geffects`.
    """

    def __init__(
        self,
        objectives: Any,
        forget_batch: Batch,
        retain_batch: Batch | None = None,
        *,
        every: int = 10,
        out_dir: str | Path = ".",
        ema: bool = False,
        per_sample: bool = False,
        weights: bool = False,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"GEffectCallback: 'every' must be a positive integer, got {every!r}")
        self.objectives = _resolve_objectives(objectives)
        self.forget_batch = forget_batch
        self.retain_batch = retain_batch
        self.every = every
        self.path = Path(out_dir) / JSONL_NAME
        self.ema = GradEMA() if ema else None
        self.per_sample = per_sample
        self.weights = weights
        self._groups: ParamGroups | None = None
        self.history: list[GEffect] = []

    def on_step(self, step: int, model: torch.nn.Module, reference: Any = None) -> list[GEffect] | None:
        """Measure at this step if it is due; returns the results (or None when skipped)."""
        if step % self.every != 0:
            return None
        if self._groups is None:
            self._groups = param_groups(model)
        results = compute_geffects(
            model,
            self.objectives,
            self.forget_batch,
            self.retain_batch,
            reference,
            groups=self._groups,
            ema=self.ema,
            per_sample=self.per_sample,
            weights=self.weights,
            step=step,
        )
        append_jsonl(self.path, [r.to_dict() for r in results])
        self.history.extend(results)
        return results


def step_of(path: str | Path, default: int) -> int:
    """The training step in a checkpoint folder's name (``checkpoint-120``, ``step_120``), else ``default``."""
    m = re.search(r"(\d+)$", Path(path).name)
    return int(m.group(1)) if m else default


def geffect_over_checkpoints(
    checkpoints: Sequence[str | Path],
    objectives: Any,
    forget: Sequence[Any] | Batch,
    retain: Sequence[Any] | Batch | None = None,
    *,
    reference_spec: str | Path | None = None,
    fmt: Any = None,
    max_length: int = 128,
    per_sample: bool = False,
    weights: bool = True,
    ema: bool = False,
    out_path: str | Path | None = None,
) -> list[GEffect]:
    """G-effects at each saved checkpoint (a list of model folders, in training order).

    Args:
        checkpoints: model folders (or run folders) loadable by ``mollm.models.loading.load_model``.
        objectives: as for :func:`compute_geffects`.
        forget / retain: either ``QARecord`` lists (encoded with the first checkpoint's tokenizer) or ready batches.
        reference_spec: the reference model for npo/tnpo/wtnpo/kl; ``None``: a peft checkpoint's adapter-disabled
            base, otherwise the first checkpoint.
        fmt / max_length: the prompt format and truncation for encoding records.
        out_path: if given, every result is appended there as JSON Lines.

    Returns:
        All results, checkpoint by checkpoint; ``step`` comes from the folder name (``checkpoint-120``) or the index.
    """
    from mollm.core.device import default_device  # noqa: PLC0415
    from mollm.engine.checkpoints import load_model_or_checkpoint as load_model  # noqa: PLC0415 (heavy; only needed here)
    from mollm.models.reference import Reference  # noqa: PLC0415

    if not checkpoints:
        raise ValueError("geffect_over_checkpoints: no checkpoint given")
    for c in checkpoints:
        if not Path(c).exists():
            raise FileNotFoundError(f"checkpoint folder not found: {c}")
    objs = _resolve_objectives(objectives)
    ref_fixed = (
        Reference.from_model(load_model(str(reference_spec), device=default_device())[0])
        if reference_spec is not None
        else None
    )
    grad_ema = GradEMA() if ema else None
    results: list[GEffect] = []
    forget_batch = retain_batch = None
    for k, ckpt in enumerate(checkpoints):
        model, tokenizer = load_model(str(ckpt), device=default_device())
        if forget_batch is None:
            forget_batch = _as_batch(forget, tokenizer, fmt, max_length, "forget")
            retain_batch = _as_batch(retain, tokenizer, fmt, max_length, "retain") if retain is not None else None
        if ref_fixed is not None:
            reference = ref_fixed
        elif hasattr(model, "peft_config"):
            reference = Reference.from_model(model)
        else:
            if k == 0:
                ref_fixed = Reference.from_model(model)
            reference = ref_fixed
        out = compute_geffects(
            model,
            objs,
            forget_batch,
            retain_batch,
            reference,
            ema=grad_ema,
            per_sample=per_sample,
            weights=weights,
            step=step_of(ckpt, k),
        )
        if out_path is not None:
            append_jsonl(out_path, [dict(r.to_dict(), checkpoint=str(ckpt)) for r in out])
        results.extend(out)
        del model
    return results


def _as_batch(data: Any, tokenizer: Any, fmt: Any, max_length: int, what: str) -> Batch:
    if isinstance(data, dict) and "input_ids" in data:
        return data
    from mollm.data.encode import PromptFormat, encode_batch  # noqa: PLC0415

    records = list(data)
    if not records:
        raise ValueError(f"{what}: no records")
    return encode_batch(records, tokenizer, fmt or PromptFormat(), max_length)


def run_tracker(setup: Any) -> GEffectCallback | None:
    """The G-effect tracker a run's ``geffect:`` section asks for (fixed probe batches, so curves over steps are
    comparable), or None without one. ``setup`` is the engine's :class:`~mollm.engine.plan.RunSetup`."""
    from mollm.data.encode import collate, encode_record

    config, plan = setup.config, setup.plan
    g = config.geffect
    if g is None:
        return None

    def probe(key: str) -> Batch:
        records = plan.data[key][: g.batch_size]
        examples = [encode_record(r, plan.tokenizer, plan.fmt, config.max_length) for r in records]
        return collate(examples, plan.pad_id, setup.device)

    forget_key = g.forget or config.objectives[0].data
    retain_key = g.retain or ("retain" if "retain" in plan.data else None)
    return GEffectCallback(
        plan.tracked,
        probe(forget_key),
        probe(retain_key) if retain_key else None,
        every=g.every,
        out_dir=setup.run_dir,
        per_sample=g.per_sample,
    )
