"""SimNPO (Fan et al. 2024): NPO without a reference model, on the length-normalised NLL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import answer_lengths, model_logprobs, per_sample_mean, sequence_level_weights
from mollm.objectives.base import Batch, GradWeights, Objective
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
        return (-(2.0 / self.options.beta) * F.logsigmoid(self._z(mean_nll))).mean()

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights:
        """Per sample ``s_i = 2 sigmoid(-beta (NLL_i / T_i - delta))``; the loss sees the *mean* log-prob, so it is
        also the token weight relative to mean-CE GA (``w_it = s_i``)."""
        mask = mask.bool()
        mean_nll = -per_sample_mean(logp.detach(), mask, answer_lengths(self.name, mask))
        s = 2.0 * torch.sigmoid(-self._z(mean_nll))
        return sequence_level_weights(s, s, logp, mask)

    def _z(self, mean_nll: torch.Tensor) -> torch.Tensor:
        """The sigmoid's argument ``beta (NLL / T - delta)``, shared by the loss and its weights."""
        return self.options.beta * (mean_nll - self.options.delta)
