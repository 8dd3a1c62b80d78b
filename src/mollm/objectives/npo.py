"""Negative preference optimisation (Zhang et al. 2024): GA reweighted by the reference, bounded below by 0."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import answer_lengths, model_logprobs, reference_logprobs, sequence_level_weights
from mollm.objectives.base import Batch, GradWeights, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class NPOOptions(base.Options):
    """``beta`` > 0 (open-unlearning uses 0.1, the G-effect code 0.5)."""

    beta: float = Field(0.1, gt=0.0, description="inverse temperature of the preference loss")


@register
class NPO(Objective):
    """``-(2/beta) log sigmoid(beta (NLL_theta - NLL_ref))`` with NLL summed over each answer; batch mean.

    The reference log-probs come from :meth:`Reference.token_logprobs` (no gradient).
    """

    name = "npo"
    Options = NPOOptions
    needs_reference = True

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        logp, _, _ = model_logprobs(self.name, model, batch)
        ref_logp, _ = reference.token_logprobs(batch)
        beta = self.options.beta
        return (-(2.0 / beta) * F.logsigmoid(beta * _margin(logp, ref_logp.detach()))).mean()

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights:
        """Per sample ``s_i = dL_i / d sum_t lp_t = 2 sigmoid(-beta m_i) = 2 p^beta / (p^beta + p_ref^beta)``, with
        ``m_i = NLL_theta - NLL_ref`` and ``p`` the *sequence* probability (the paper's NPO weight); as the token weight
        relative to mean-CE GA, ``w_it = T_i s_i``."""
        mask = mask.bool()
        lengths = answer_lengths(self.name, mask)
        ref = reference_logprobs(self.name, ref_logp, logp)
        s = 2.0 * torch.sigmoid(-self.options.beta * _margin(logp.detach() * mask, ref * mask))
        return sequence_level_weights(s, s * lengths, logp, mask)


def _margin(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``NLL_theta - NLL_ref`` per sample (B,), from log-probs that are 0 off the answer mask."""
    return ref_logp.sum(-1) - logp.sum(-1)
