"""Unlikelihood cross-entropy (MOLLM): a bounded forget loss whose gradient does not explode as ``p -> 0``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import model_logprobs, per_sample_mean, token_level_weights
from mollm.objectives.base import Batch, GradWeights, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class UCEOptions(base.Options):
    """``eps`` in (0, 1): the loss lies in ``[0, -log eps]`` and ``dL/dp <= (1 - eps) / eps``."""

    eps: float = Field(0.5, gt=0.0, lt=1.0, description="floor of 1 - (1 - eps) p; FedOSD/MOLLM use 1/2")


@register
class UCE(Objective):
    """``mean_t -log(1 - (1 - eps) p_t)`` per sample, averaged over the batch; minimised (at 0) by ``p -> 0``."""

    name = "uce"
    Options = UCEOptions

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        logp, mask, lengths = model_logprobs(self.name, model, batch)
        # log1p keeps precision when (1-eps) p is tiny; the argument stays >= -(1-eps) > -1, so it is always finite.
        per_token = -torch.log1p(-(1.0 - self.options.eps) * logp.exp())
        return per_sample_mean(per_token, mask, lengths).mean()

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights:
        """``w = d(-log(1 - k p))/d log p = k p / (1 - k p)`` with ``k = 1 - eps``.

        It vanishes as ``p -> 0`` and is at most ``(1 - eps) / eps`` as ``p -> 1``; on ``grad p`` it is
        ``k / (1 - k p)``, bounded where GA's ``1 / p`` explodes.
        """
        k = 1.0 - self.options.eps
        p = logp.detach().exp()
        return token_level_weights(self.name, k * p / (1.0 - k * p), logp, mask)
