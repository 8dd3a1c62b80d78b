"""G-effects: inner products between the risk gradient and an objective's gradient, decomposed by layer and sample.

Definitions (``../shared/notes/metrics.md``, "G-effect"). With the update ``theta <- theta - eta grad L_obj`` a first-order
expansion gives ``R(D; theta_new) - R(D; theta) ~= -eta <grad R(D), grad L_obj>``. The G-effect is
``e = <grad R(D), grad L_obj>`` with ``R = NLL``:

- unlearning G-effect ``e_u``: ``D`` = forget batch; negative means the forget NLL rises (forgetting);
- retaining G-effect ``e_r``: ``D`` = retain batch; negative means collateral damage, ``>= 0`` is harmless.

**NLL normalisation.** ``R(D) = (1/N) sum_i CE_i`` with ``CE_i = -(1/T_i) sum_t log p_it``: the mean over the batch of
each sample's mean answer-token cross-entropy (prompt and padding never count). This is exactly ``-GA``, so GA on the
forget batch has ``e_u = -||grad R(forget)||^2``.

**Cost.** One backward pass for each risk (forget NLL, retain NLL), shared by all objectives, and one per objective:
``2 + K`` passes for ``K`` objectives. Gradients are taken with ``torch.autograd.grad`` over the trainable parameters,
so the model's ``.grad`` buffers (a running training step's) are never touched. The model is put in ``eval`` mode
(no dropout) during the measurement and restored afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mollm.core.atomic import json_safe
from mollm.core.device import model_device, to_device
from mollm.geffect.groups import ParamGroups, param_groups
from mollm.geffect.weights import ImplicitWeights
from mollm.objectives._common import answer_logprobs, check_batch, forward, model_logprobs, per_sample_mean
from mollm.objectives.base import Batch, Objective

RETAIN_SIDE: frozenset[str] = frozenset({"nll", "kl"})
"""Objectives that act on retain data: without an explicit batch they get the retain batch, not the forget batch."""

EMA_OLD, EMA_NEW = 0.6, 0.4  # the G-effect paper's code: g <- 0.6 g_old + 0.4 g_new


# --------------------------------------------------------------------------------------------------------------
# Risk (NLL) and gradients
# --------------------------------------------------------------------------------------------------------------


def sequence_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``batch`` and return the answer-token log-probs (B, L-1) and answer mask (with the graph).

    A float64 model's log-probs stay float64 (precision matters for the first-order check).
    """
    return answer_logprobs(forward(model, batch).logits, batch["labels"])


def answer_nll(model: torch.nn.Module, batch: Batch, *, what: str = "batch") -> torch.Tensor:
    """The risk ``R``: mean over samples of each sample's mean answer-token cross-entropy (scalar, with graph).

    Raises:
        ValueError: a key is missing or a sample has no answer token (naming ``what``).
    """
    logp, mask, lengths = model_logprobs(what, model, batch, who=what, keep_float64=True)
    return (-per_sample_mean(logp, mask, lengths)).mean()


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    if loss.dim() != 0:
        raise ValueError(f"{what}: the loss must be a scalar, got shape {tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise ValueError(f"{what}: the loss is {loss.item()} (not finite); the G-effect is undefined here")
    if not loss.requires_grad:
        # e.g. KL at step 0 computed without graph: the gradient is exactly zero.
        return [torch.zeros_like(p) for p in params]
    gs = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, gs)]


def _dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[float]:
    """Per-parameter inner products, accumulated in float64."""
    return [torch.dot(x.reshape(-1), y.reshape(-1)).double().item() for x, y in zip(a, b)]


def _norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.dot(x.reshape(-1), x.reshape(-1))) for x in a))


class GradEMA:
    """Exponential moving average of gradients across calls: ``g <- 0.6 g_old + 0.4 g_new`` (the paper's code).

    One state per key (``"forget"``, ``"retain"``, ``"obj:<name>"``); the first call for a key returns the gradient
    itself. Holds one copy of the trainable parameters per key.
    """

    def __init__(self, old: float = EMA_OLD, new: float = EMA_NEW) -> None:
        if not (0.0 <= old < 1.0 and 0.0 < new <= 1.0):
            raise ValueError(f"GradEMA: need 0 <= old < 1 and 0 < new <= 1, got old={old}, new={new}")
        self.old, self.new = old, new
        self._state: dict[str, list[torch.Tensor]] = {}

    def __call__(self, key: str, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        prev = self._state.get(key)
        if prev is None or len(prev) != len(grads):
            smoothed = [g.clone() for g in grads]
        else:
            smoothed = [self.old * p + self.new * g for p, g in zip(prev, grads)]
        self._state[key] = smoothed
        return smoothed


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SampleEffects:
    """Per-forget-sample effects.

    Attributes:
        logp_forget / logp_retain: ``<grad R(D), grad log p(y_i|x_i)>`` with ``log p`` summed over the answer (the
            paper's per-instance effect; a negative objective weight times it is the sample's push).
        contrib_u / contrib_r: the sample's exact share of ``e_u`` / ``e_r`` (the objective on that sample alone,
            divided by N); they sum to the batch G-effect for objectives that are batch means (``sum_u`` checks).
    """

    logp_forget: list[float]
    logp_retain: list[float] | None
    contrib_u: list[float] = field(default_factory=list)
    contrib_r: list[float] | None = None


@dataclass
class GEffect:
    """The G-effects of one objective at one model state.

    ``per_group`` maps each parameter group (``embedding``, ``block.<i>``, ``final_norm``, ``head``, ``other``) to
    ``{"e_u": .., "e_r": ..}``; ``per_depth`` the same for embedding / shallow / middle / deep / final_norm / head.
    The group values sum to the totals. ``e_r`` is ``None`` without a retain batch.
    """

    objective: str
    e_u: float
    e_r: float | None
    per_group: dict[str, dict[str, float | None]]
    per_depth: dict[str, dict[str, float | None]]
    loss: float
    forget_nll: float
    retain_nll: float | None
    grad_norm: dict[str, float | None]
    cosine: dict[str, float | None]
    n_params: int
    tied: list[str]
    step: int | None = None
    seconds: float = 0.0
    samples: SampleEffects | None = None
    weights: ImplicitWeights | None = None
    ema: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN/inf become ``None``)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("samples", "weights")}
        d["samples"] = None if self.samples is None else dict(self.samples.__dict__)
        d["weights"] = None if self.weights is None else self.weights.to_dict()
        return json_safe(d)


# --------------------------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------------------------


def _objective_name(obj: Objective) -> str:
    return str(getattr(obj, "name", type(obj).__name__))


def _resolve_objectives(objectives: Any) -> dict[str, Objective]:
    """Accept an Objective, a name, a sequence of either, or a mapping label -> Objective."""
    if isinstance(objectives, Mapping):
        items = list(objectives.items())
    else:
        if isinstance(objectives, (str, Objective)) or callable(objectives) and not isinstance(objectives, Sequence):
            objectives = [objectives]
        items = []
        for o in objectives:
            if isinstance(o, str):
                from mollm.objectives import get as get_objective  # noqa: PLC0415 (lazy: the registry fills on import)

                o = get_objective(o)
            items.append((_objective_name(o), o))
    out: dict[str, Objective] = {}
    for label, o in items:
        if not callable(o):
            raise TypeError(f"objective {label!r}: expected a callable Objective, got {type(o).__name__}")
        if label in out:
            raise ValueError(f"objective label {label!r} given twice; pass a mapping with distinct labels")
        out[label] = o
    if not out:
        raise ValueError("no objective given")
    return out


def _slice(batch: Batch, i: int) -> dict[str, torch.Tensor]:
    """Row ``i`` of a right-padded batch, trimmed to its own length."""
    row = {k: v[i : i + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    am = row.get("attention_mask")
    if am is not None:
        n = int(am.sum())
        row = {k: v[:, :n] for k, v in row.items()}
    return row


def _group_sum(values: list[float], keys: list[str], order: list[str]) -> dict[str, float]:
    out = {k: 0.0 for k in order}
    for v, k in zip(values, keys):
        out[k] += v
    return out


def _weights_for(
    label: str, obj: Objective, model: torch.nn.Module, batch: Batch, reference: Any
) -> ImplicitWeights | None:
    """The objective's own implicit weights on its batch (None if it has none, e.g. kl, rmu, a plain callable)."""
    if not isinstance(obj, Objective) or (obj.needs_reference and reference is None):
        return None
    w = obj.implicit_weights(model, batch, reference)
    return None if w is None else ImplicitWeights.from_grad_weights(label, w)


def compute_geffects(
    model: torch.nn.Module,
    objectives: Any,
    forget_batch: Batch,
    retain_batch: Batch | None = None,
    reference: Any = None,
    *,
    objective_batches: Mapping[str, Batch] | None = None,
    groups: ParamGroups | None = None,
    ema: GradEMA | None = None,
    per_sample: bool = False,
    weights: bool = True,
    step: int | None = None,
) -> list[GEffect]:
    """G-effects of every objective at the model's current state, by layer (and optionally by sample).

    Args:
        model: the model (full or peft); only its trainable parameters count.
        objectives: an Objective, a name, a list of them, or a mapping label -> Objective.
        forget_batch: the forget data; ``R(forget)`` defines ``e_u``. Also each forget objective's batch.
        retain_batch: the retain data; ``R(retain)`` defines ``e_r`` (omitted: ``e_r`` is None).
        reference: the frozen reference (:class:`~mollm.models.reference.Reference`) for npo / tnpo / wtnpo / kl.
        objective_batches: per-label batch overriding the default (forget batch; retain batch for nll / kl).
        groups: precomputed :func:`param_groups` (computed if None).
        ema: a :class:`GradEMA` to smooth all gradients across calls (the paper's 0.6 / 0.4).
        per_sample: also compute each forget sample's effects (2 extra backward passes per sample and objective).
        weights: also report each objective's own implicit per-token / per-sample weights
            (:meth:`~mollm.objectives.base.Objective.implicit_weights`; one forward pass, no gradient).
        step: stored in the results.

    Returns:
        One :class:`GEffect` per objective, in the given order.
    """
    objs = _resolve_objectives(objectives)
    check_batch("forget_batch", forget_batch, who="forget_batch")
    if retain_batch is not None:
        check_batch("retain_batch", retain_batch, who="retain_batch")
    device = model_device(model)
    forget_batch = to_device(forget_batch, device)
    retain_batch = to_device(retain_batch, device) if retain_batch is not None else None
    if objective_batches is not None:
        objective_batches = {k: to_device(b, device) for k, b in objective_batches.items()}
    groups = groups if groups is not None else param_groups(model)
    params = groups.params
    depth_keys = [groups.depth_of_group[g] for g in groups.group_of]
    coarse = groups.coarse_groups()
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        nll_f = answer_nll(model, forget_batch, what="forget_batch")
        g_f = _grads(nll_f, params, "forget NLL")
        nll_r, g_r = None, None
        if retain_batch is not None:
            nll_r = answer_nll(model, retain_batch, what="retain_batch")
            g_r = _grads(nll_r, params, "retain NLL")
        if ema is not None:
            g_f = ema("forget", g_f)
            if g_r is not None:
                g_r = ema("retain", g_r)
        shared_seconds = time.perf_counter() - t0
        samples_base: tuple[list[float], list[float] | None] | None = None
        if per_sample:
            samples_base = _logp_sample_effects(model, forget_batch, params, g_f, g_r)

        results: list[GEffect] = []
        for label, obj in objs.items():
            t1 = time.perf_counter()
            name = _objective_name(obj)
            batch = (objective_batches or {}).get(label)
            if batch is None:
                batch = retain_batch if (name in RETAIN_SIDE and retain_batch is not None) else forget_batch
            loss = obj(model, batch, reference)
            g_o = _grads(loss, params, f"objective '{label}'")
            if ema is not None:
                g_o = ema(f"obj:{label}", g_o)
            du = _dots(g_f, g_o)
            dr = _dots(g_r, g_o) if g_r is not None else None
            per_group = {g: {"e_u": v, "e_r": None} for g, v in _group_sum(du, groups.group_of, groups.groups).items()}
            per_depth = {g: {"e_u": v, "e_r": None} for g, v in _group_sum(du, depth_keys, coarse).items()}
            if dr is not None:
                for g, v in _group_sum(dr, groups.group_of, groups.groups).items():
                    per_group[g]["e_r"] = v
                for g, v in _group_sum(dr, depth_keys, coarse).items():
                    per_depth[g]["e_r"] = v
            n_o, n_f = _norm(g_o), _norm(g_f)
            n_r = _norm(g_r) if g_r is not None else None
            e_u, e_r = sum(du), (sum(dr) if dr is not None else None)
            samples = None
            if per_sample and samples_base is not None:
                samples = SampleEffects(logp_forget=samples_base[0], logp_retain=samples_base[1])
                samples.contrib_u, samples.contrib_r = _objective_sample_effects(
                    model, obj, batch, reference, params, g_f, g_r
                )
            w = _weights_for(label, obj, model, batch, reference) if weights else None
            results.append(
                GEffect(
                    objective=label,
                    e_u=e_u,
                    e_r=e_r,
                    per_group=per_group,
                    per_depth=per_depth,
                    loss=float(loss.detach()),
                    forget_nll=float(nll_f.detach()),
                    retain_nll=None if nll_r is None else float(nll_r.detach()),
                    grad_norm={"objective": n_o, "forget_nll": n_f, "retain_nll": n_r},
                    cosine={
                        "forget": e_u / (n_o * n_f) if n_o * n_f > 0 else None,
                        "retain": (e_r / (n_o * n_r)) if (e_r is not None and n_r and n_o) else None,
                    },
                    n_params=groups.numel,
                    tied=list(groups.tied),
                    step=step,
                    seconds=time.perf_counter() - t1 + shared_seconds / len(objs),
                    samples=samples,
                    weights=w,
                    ema=ema is not None,
                )
            )
        return results
    finally:
        model.train(was_training)


def geffect(
    model: torch.nn.Module,
    objective: Objective | str,
    forget_batch: Batch,
    retain_batch: Batch | None = None,
    reference: Any = None,
    **kwargs: Any,
) -> GEffect:
    """G-effect of one objective (see :func:`compute_geffects` for the arguments)."""
    return compute_geffects(model, [objective], forget_batch, retain_batch, reference, **kwargs)[0]


def _logp_sample_effects(
    model: torch.nn.Module,
    batch: Batch,
    params: list[torch.nn.Parameter],
    g_f: list[torch.Tensor],
    g_r: list[torch.Tensor] | None,
) -> tuple[list[float], list[float] | None]:
    """``<grad R(D), grad log p(y_i|x_i)>`` for each forget sample (log p summed over the answer)."""
    eu: list[float] = []
    er: list[float] | None = [] if g_r is not None else None
    n = int(batch["input_ids"].size(0))
    for i in range(n):
        row = _slice(batch, i)
        logp, _ = sequence_logprobs(model, row)
        g = _grads(logp.sum(), params, f"log p of forget sample {i}")
        eu.append(sum(_dots(g_f, g)))
        if er is not None and g_r is not None:
            er.append(sum(_dots(g_r, g)))
    return eu, er


def _objective_sample_effects(
    model: torch.nn.Module,
    obj: Objective,
    batch: Batch,
    reference: Any,
    params: list[torch.nn.Parameter],
    g_f: list[torch.Tensor],
    g_r: list[torch.Tensor] | None,
) -> tuple[list[float], list[float] | None]:
    """Each sample's share of the G-effect: the objective on that sample alone, divided by the batch size."""
    n = int(batch["input_ids"].size(0))
    cu: list[float] = []
    cr: list[float] | None = [] if g_r is not None else None
    for i in range(n):
        row = _slice(batch, i)
        g = _grads(obj(model, row, reference) / n, params, f"objective on sample {i}")
        cu.append(sum(_dots(g_f, g)))
        if cr is not None and g_r is not None:
            cr.append(sum(_dots(g_r, g)))
    return cu, cr
