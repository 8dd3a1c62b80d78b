"""Token-weighted gradient ascent from the G-effect paper (Wang et al. 2025): ``wga``, ``tnpo``, ``wtnpo``.

Each loss is ``-mean_t w_t CE_t = mean_t w_t log p_t`` per sample (averaged over the batch) with a detached per-token
weight ``w_t`` that fades as the token becomes improbable, so ascent slows down on tokens already forgotten.
:meth:`token_weights` is the formula; :meth:`weights_from_logprobs` hands the same weights to the G-effect toolkit
(the loss's gradient is exactly the weighted GA gradient, since ``w_t`` is detached).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import model_logprobs, per_sample_mean, reference_logprobs, token_level_weights
from mollm.objectives.base import Batch, GradWeights, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class _TokenWeighted(Objective):
    """Shared loss of the weighted family; subclasses define :meth:`token_weights`."""

    def token_weights(self, logp: torch.Tensor, ref_logp: torch.Tensor | None) -> torch.Tensor:
        """Per-token weights from the model's (and the reference's) answer log-probs, same shape, no gradient."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        logp, mask, lengths = model_logprobs(self.name, model, batch)
        ref_logp = reference.token_logprobs(batch)[0].detach() if self.needs_reference else None
        w = self.token_weights(logp.detach(), ref_logp)
        return per_sample_mean(w * logp, mask, lengths).mean()

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights:
        """The loss's own :meth:`token_weights`: ``grad (w lp) = w grad lp`` with ``w`` detached."""
        ref = reference_logprobs(self.name, ref_logp, logp) if self.needs_reference else None
        return token_level_weights(self.name, self.token_weights(logp.detach(), ref), logp, mask)


class WGAOptions(base.Options):
    """``alpha`` >= 0. Default 5 as in the G-effect authors' code; open-unlearning uses 1 (a gentler fade)."""

    alpha: float = Field(5.0, ge=0.0, description="exponent of the weight p_t^alpha")


@register
class WGA(_TokenWeighted):
    """Weighted gradient ascent: ``w_t = p_t^alpha``."""

    name = "wga"
    Options = WGAOptions

    def token_weights(self, logp: torch.Tensor, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
        return (self.options.alpha * logp.detach()).exp()


class TNPOOptions(base.Options):
    """``beta`` > 0 (G-effect paper: 4)."""

    beta: float = Field(4.0, gt=0.0, description="inverse temperature of the token-wise NPO weight")


@register
class TNPO(_TokenWeighted):
    """Token-wise NPO: ``w_t = 2 p_t^beta / (p_t^beta + p_ref,t^beta) = 2 sigmoid(beta (log p_t - log p_ref,t))``."""

    name = "tnpo"
    Options = TNPOOptions
    needs_reference = True

    def token_weights(self, logp: torch.Tensor, ref_logp: torch.Tensor | None) -> torch.Tensor:
        if ref_logp is None:
            raise ValueError(f"objective '{self.name}' needs the reference log-probs")
        # The sigmoid form never divides 0 by 0, even when both probabilities underflow.
        return 2.0 * torch.sigmoid(self.options.beta * (logp.detach() - ref_logp.detach()))


class WTNPOOptions(base.Options):
    """``beta`` > 0 and ``alpha`` >= 0 (G-effect paper: 4 and 1.5)."""

    beta: float = Field(4.0, gt=0.0, description="inverse temperature of the token-wise NPO weight")
    alpha: float = Field(1.5, ge=0.0, description="extra exponent on p_t (as in WGA)")


@register
class WTNPO(_TokenWeighted):
    """Weighted token-wise NPO: ``w_t = 2 p_t^(beta+alpha) / (p_t^beta + p_ref,t^beta + 1e-5)``."""

    name = "wtnpo"
    Options = WTNPOOptions
    needs_reference = True
    _FLOOR = 1e-5

    def token_weights(self, logp: torch.Tensor, ref_logp: torch.Tensor | None) -> torch.Tensor:
        if ref_logp is None:
            raise ValueError(f"objective '{self.name}' needs the reference log-probs")
        beta, alpha = self.options.beta, self.options.alpha
        logp, ref_logp = logp.detach(), ref_logp.detach()
        # Work in log space: p^(beta+alpha) underflows float32 long before the ratio does.
        log_num = math.log(2.0) + (beta + alpha) * logp
        log_den = torch.logsumexp(
            torch.stack([beta * logp, beta * ref_logp, torch.full_like(logp, math.log(self._FLOOR))]), dim=0
        )
        return (log_num - log_den).exp()
