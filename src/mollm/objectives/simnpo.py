"""SimNPO (Fan et al. 2024): NPO without a reference model, on the length-normalised NLL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import model_logprobs, per_sample_mean
from mollm.objectives.base import Batch, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class SimNPOOptions(base.Options):
    """``beta`` > 0 and the margin ``delta`` (paper defaults 2.5 and 0)."""

    beta: float = Field(2.5, gt=0.0, description="inverse temperature")
    delta: float = Field(0.0, description="reward margin subtracted from the mean NLL")


@register
class SimNPO(Objective):
    """``-(2/beta) log sigmoid(beta (NLL_theta / T - delta))`` per sample, averaged over the batch."""

    name = "simnpo"
    Options = SimNPOOptions

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        logp, mask, lengths = model_logprobs(self.name, model, batch)
        mean_nll = -per_sample_mean(logp, mask, lengths)
        beta = self.options.beta
        return (-(2.0 / beta) * F.logsigmoid(beta * (mean_nll - self.options.delta))).mean()
