"""Unlikelihood cross-entropy (MOLLM): a bounded forget loss whose gradient does not explode as ``p -> 0``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import model_logprobs, per_sample_mean
from mollm.objectives.base import Batch, Objective
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
