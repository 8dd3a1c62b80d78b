"""Each unlearning objective's implicit per-token and per-sample weights (the G-effect paper's decomposition), as
reported by the G-effect toolkit.

The formulas live with the objectives: :meth:`~mollm.objectives.base.Objective.implicit_weights` returns a
:class:`~mollm.objectives.base.GradWeights`, i.e. the objective's gradient written as::

    grad L = (1/N) sum_i (1/T_i) sum_t w_it * grad log p_it          (N samples, T_i answer tokens of sample i)

with the weights ``w_it`` held constant and normalised so that **GA (``-CE``) has ``w = 1``**. This module turns them
into the reported views (:class:`ImplicitWeights`) and offers the same by objective name on precomputed log-probs
(:func:`implicit_weights`, :func:`token_weights`).

The *inverse-confidence* view writes the same gradient on ``grad p`` instead of ``grad log p``: the coefficient is
``w / p`` — for GA exactly ``1/p_t`` per token and ``1/pbar_i`` per sample, where ``pbar_i = exp(-CE_i)`` is the
per-token geometric-mean probability (what a mean-CE loss sees; ``grad mean_t lp = grad log pbar``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mollm.objectives import available, objective_class
from mollm.objectives import get as get_objective
from mollm.objectives.base import GradWeights

# Other spellings of an option accepted by the name-based functions.
_ALIASES: dict[str, str] = {"epsilon": "eps", "a": "alpha", "b": "beta", "gamma": "delta"}


@dataclass
class ImplicitWeights:
    """Implicit weights of one objective on one batch (lists are per sample, answer tokens only).

    Attributes:
        objective: the objective's name.
        token_weight: ``w_it`` relative to GA (GA = 1), one list per sample.
        token_weight_on_p: ``w_it / p_it``, the coefficient on ``grad p`` (GA: ``1/p``).
        sample_weight: per-sample weight (GA = 1): ``s_i`` for the sequence-level npo/simnpo, else ``mean_t w_it``.
        sample_weight_on_p: ``sample_weight / pbar_i`` with ``pbar_i = exp(-CE_i)`` (GA: ``1/pbar``).
        token_prob: ``p_it``; ``sample_prob``: ``pbar_i``.
    """

    objective: str
    token_weight: list[list[float]]
    token_weight_on_p: list[list[float]]
    sample_weight: list[float]
    sample_weight_on_p: list[float]
    token_prob: list[list[float]]
    sample_prob: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_grad_weights(cls, objective: str, weights: GradWeights) -> ImplicitWeights:
        """The reported views of an objective's :class:`~mollm.objectives.base.GradWeights`."""
        w, s, logp, m = weights.token, weights.sample, weights.logp, weights.mask.bool()
        p = logp.exp()
        pbar = ((logp * m).sum(-1) / m.sum(-1)).exp()
        rows = range(logp.size(0))
        return cls(
            objective=objective,
            token_weight=[w[i][m[i]].tolist() for i in rows],
            token_weight_on_p=[(w[i][m[i]] / p[i][m[i]]).tolist() for i in rows],
            sample_weight=s.tolist(),
            sample_weight_on_p=(s / pbar).tolist(),
            token_prob=[p[i][m[i]].tolist() for i in rows],
            sample_prob=pbar.tolist(),
        )


def supported() -> list[str]:
    """Names of the registered objectives that define implicit weights, sorted."""
    return [name for name in available() if objective_class(name).has_implicit_weights()]


def resolve_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of ``options`` that objective ``name`` has (aliases such as ``epsilon`` -> ``eps`` applied); other
    keys are ignored so one options dict can serve several objectives. Missing options take the objective's defaults."""
    fields = objective_class(name).Options.model_fields
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        key = _ALIASES.get(key, key)
        if key in fields:
            out[key] = value
    return out


def _objective_weights(
    name: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    options: Mapping[str, Any] | None,
) -> GradWeights:
    if name not in available() or not objective_class(name).has_implicit_weights():
        raise ValueError(
            f"no implicit-weight formula for objective '{name}'; supported: {', '.join(supported())} "
            "(objectives like kl or rmu do not act only through the answer's log-probs)"
        )
    weights = get_objective(name, **resolve_options(name, options)).weights_from_logprobs(logp, mask, ref_logp)
    if weights is None:  # pragma: no cover - has_implicit_weights said it had a formula
        raise ValueError(f"objective '{name}' returned no implicit weights")
    return weights


def token_weights(
    name: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights ``w`` (B, T) relative to GA, and the per-sample weights (B,), zero off the answer mask.

    The objective ``name`` built with ``options`` computes them
    (:meth:`~mollm.objectives.base.Objective.weights_from_logprobs`).

    Args:
        name: a registered objective with implicit weights (:func:`supported`).
        logp: answer-token log-probs of the model, (B, T), 0 where masked.
        mask: answer mask (B, T).
        ref_logp: the reference's log-probs, needed for npo / tnpo / wtnpo.
        options: the objective's options (``alpha``, ``beta``, ``eps``, ``delta``); missing ones take the defaults.

    Raises:
        ValueError: unsupported objective, missing reference log-probs, a sample without answer tokens.
    """
    weights = _objective_weights(name, logp, mask, ref_logp, options)
    return weights.token, weights.sample


def implicit_weights(
    name: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> ImplicitWeights:
    """All implicit-weight views of objective ``name`` on a batch (arguments as :func:`token_weights`)."""
    return ImplicitWeights.from_grad_weights(name, _objective_weights(name, logp, mask, ref_logp, options))
