"""Gradient ascent (Yao et al. 2023): minimise ``-CE`` of the forget answer, i.e. push its log-probability down."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mollm.objectives._common import model_logprobs, per_sample_mean, token_level_weights
from mollm.objectives.base import Batch, GradWeights, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


@register
class GA(Objective):
    """``-CE = mean_t log p_t`` per sample, averaged over the batch.

    Unbounded below: its gradient in ``p`` is ``1/p``, which explodes as the answer becomes improbable.
    """

    name = "ga"

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        logp, mask, lengths = model_logprobs(self.name, model, batch)
        return per_sample_mean(logp, mask, lengths).mean()

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights:
        """``w = 1`` for every answer token: GA is the unit of the implicit weights."""
        return token_level_weights(self.name, torch.ones_like(logp), logp, mask)
