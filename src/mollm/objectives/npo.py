"""Negative preference optimisation (Zhang et al. 2024): GA reweighted by the reference, bounded below by 0."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import model_logprobs
from mollm.objectives.base import Batch, Objective
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
        margin = ref_logp.detach().sum(-1) - logp.sum(-1)  # NLL_theta - NLL_ref
        return (-(2.0 / beta) * F.logsigmoid(beta * margin)).mean()
