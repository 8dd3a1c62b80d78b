"""Each unlearning objective's implicit per-token and per-sample weights (the G-effect paper's decomposition).

Every forget objective below depends on the model only through the answer-token log-probabilities
``lp_t = log p_t`` of its batch, so its gradient is a weighted sum of the per-token gradients::

    grad L = (1/N) sum_i (1/T_i) sum_t w_it * grad log p_it          (N samples, T_i answer tokens of sample i)

with the weights ``w_it`` treated as constants. The weights are normalised so that **GA (``-CE``) has ``w = 1``**:
they say how much more or less than gradient ascent each token is pushed down. Derivations (``p`` the model's,
``p_ref`` the reference's probability, ``sigma`` the logistic function, options as in objectives.md):

- ``ga``:    ``L = mean_i mean_t lp``                        -> ``w = 1``
- ``nll``:   ``L = -mean_i mean_t lp`` (descent)             -> ``w = -1``
- ``wga``:   ``L = mean_t p^a.detach() lp``                  -> ``w = p^alpha``
- ``tnpo``:  ``w = 2 p^b / (p^b + p_ref^b) = 2 sigma(b (lp - lp_ref))`` per token
- ``wtnpo``: ``w = 2 p^(b+a) / (p^b + p_ref^b + 1e-5)`` per token
- ``uce``:   ``L = mean_t -log(1 - (1-eps) p)``; ``dL/dlp = (1-eps) p / (1 - (1-eps) p)`` -> ``w = (1-eps) p / (1-(1-eps) p)``
  (vanishes as ``p -> 0``, at most ``(1-eps)/eps`` as ``p -> 1``: bounded where GA's ``1/p`` on ``grad p`` explodes)
- ``npo``:   ``L_i = -(2/b) log sigma(b (NLL_i - NLL_ref,i))`` with summed NLL; ``dL_i/dlp_t = 2 sigma(b (sum lp - sum lp_ref))``,
  i.e. the paper's per-sample weight ``s_i = 2 p^b / (p^b + p_ref^b)`` with ``p`` the *sequence* probability; since our GA
  averages over tokens, the per-token weight relative to GA is ``w = T_i s_i``
- ``simnpo``: ``L_i = -(2/b) log sigma(b (NLL_i/T_i - delta))`` -> ``s_i = w = 2 sigma(b (mean lp + delta))``

The *inverse-confidence* view writes the same gradient on ``grad p`` instead of ``grad log p``: the coefficient is
``w / p`` — for GA exactly ``1/p_t`` per token and ``1/pbar_i`` per sample, where ``pbar_i = exp(-CE_i)`` is the
per-token geometric-mean probability (what a mean-CE loss sees; ``grad mean_t lp = grad log pbar``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED: tuple[str, ...] = ("ga", "nll", "wga", "tnpo", "wtnpo", "uce", "npo", "simnpo")
NEEDS_REFERENCE: frozenset[str] = frozenset({"tnpo", "wtnpo", "npo"})
_DEFAULTS: dict[str, dict[str, float]] = {
    "wga": {"alpha": 5.0},
    "tnpo": {"beta": 4.0},
    "wtnpo": {"beta": 4.0, "alpha": 1.5},
    "uce": {"eps": 0.5},
    "npo": {"beta": 0.1},
    "simnpo": {"beta": 2.5, "delta": 0.0},
}
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


def resolve_options(name: str, options: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric options the weight formula of ``name`` needs, with notes' defaults for missing ones."""
    out = dict(_DEFAULTS.get(name, {}))
    for key, value in (options or {}).items():
        key = _ALIASES.get(key, key)
        if key in out and isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def token_weights(
    name: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights ``w`` (B, T) relative to GA, and the per-sample weights (B,), zero off the answer mask.

    Args:
        name: objective name, one of :data:`SUPPORTED`.
        logp: answer-token log-probs of the model, (B, T), 0 where masked.
        mask: answer mask (B, T).
        ref_logp: the reference's log-probs, needed for npo / tnpo / wtnpo.
        options: the objective's options (``alpha``, ``beta``, ``eps``, ``delta``); missing ones take the defaults.

    Raises:
        ValueError: unsupported objective, missing reference log-probs, a sample without answer tokens.
    """
    if name not in SUPPORTED:
        raise ValueError(
            f"no implicit-weight formula for objective '{name}'; supported: {', '.join(SUPPORTED)} "
            "(objectives like kl, idk, mismatch or rmu do not act only through the forget answer's log-probs)"
        )
    if name in NEEDS_REFERENCE and ref_logp is None:
        raise ValueError(f"implicit weights of '{name}' need the reference log-probs (ref_logp), got None")
    opts = resolve_options(name, options)
    logp = logp.detach()
    m = mask.to(logp.dtype)
    lengths = m.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("implicit weights: a batch row has no answer token (mask all False)")
    p = logp.exp()
    ref = ref_logp.detach().to(logp.dtype) if ref_logp is not None else None
    if name == "ga":
        w = torch.ones_like(logp)
    elif name == "nll":
        w = -torch.ones_like(logp)
    elif name == "wga":
        w = p.pow(opts["alpha"])
    elif name == "tnpo":
        w = 2.0 * torch.sigmoid(opts["beta"] * (logp - ref))
    elif name == "wtnpo":
        b, a = opts["beta"], opts["alpha"]
        w = 2.0 * p.pow(b + a) / (p.pow(b) + ref.exp().pow(b) + 1e-5)
    elif name == "uce":
        k = 1.0 - opts["eps"]
        w = k * p / (1.0 - k * p)
    elif name == "npo":
        s = 2.0 * torch.sigmoid(opts["beta"] * ((logp * m).sum(-1) - (ref * m).sum(-1)))
        return (s * lengths).unsqueeze(-1) * m, s
    else:  # simnpo
        mean_lp = (logp * m).sum(-1) / lengths
        s = 2.0 * torch.sigmoid(opts["beta"] * (mean_lp + opts["delta"]))
        return s.unsqueeze(-1) * m, s
    w = w * m
    return w, w.sum(-1) / lengths


def implicit_weights(
    name: str,
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> ImplicitWeights:
    """All implicit-weight views of objective ``name`` on a batch (see the module docstring for the formulas)."""
    w, s = token_weights(name, logp, mask, ref_logp, options)
    logp = logp.detach()
    m = mask.bool()
    p = logp.exp()
    pbar = ((logp * m).sum(-1) / m.sum(-1)).exp()
    rows = range(logp.size(0))
    return ImplicitWeights(
        objective=name,
        token_weight=[w[i][m[i]].tolist() for i in rows],
        token_weight_on_p=[(w[i][m[i]] / p[i][m[i]]).tolist() for i in rows],
        sample_weight=s.tolist(),
        sample_weight_on_p=(s / pbar).tolist(),
        token_prob=[p[i][m[i]].tolist() for i in rows],
        sample_prob=pbar.tolist(),
    )
