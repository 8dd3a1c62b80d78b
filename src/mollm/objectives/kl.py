"""KL to the reference model on normal/retain data (Yao et al. 2023, MOLLM's ``L_KL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mollm.objectives._common import answer_lengths, check_batch, forward, per_sample_mean
from mollm.objectives.base import IGNORE_INDEX, Batch, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class _KLFromLogits(torch.autograd.Function):
    """Per-row ``KL(p_ref || softmax(z))`` with the analytic gradient ``softmax(z) - p_ref``.

    Autograd through log_softmax would give ``q * sum(p_ref) - p_ref``, about 1e-8 instead of exactly 0 at the
    reference because ``sum(p_ref)`` is not exactly 1 in float32; the closed form is exactly 0 there.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        logq = F.log_softmax(logits, dim=-1)
        # kl_div(input=log q, target=log p, log_target) = p (log p - log q): 0 where p underflows, exactly 0 if p == q.
        per_row = F.kl_div(logq, ref_logp, reduction="none", log_target=True).sum(-1)
        ctx.save_for_backward(logq, ref_logp)
        return per_row

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logq, ref_logp = ctx.saved_tensors
        return grad_out[:, None] * (logq.exp() - ref_logp.exp()), None


@register
class KL(Objective):
    """``KL(p_ref || p_theta)`` over the full vocabulary, averaged over each sample's answer positions, then over the
    batch. Exactly 0, with a zero gradient, while the model equals the reference."""

    name = "kl"
    needs_reference = True

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        check_batch(self.name, batch)
        mask = batch["labels"][:, 1:].ne(IGNORE_INDEX)
        lengths = answer_lengths(self.name, mask)
        logits = forward(model, batch).logits[:, :-1][mask]  # only answer positions: (N, V)
        ref_logits = reference.logits(batch)[:, :-1][mask].detach()
        per_pos = _KLFromLogits.apply(logits.float(), F.log_softmax(ref_logits.float(), dim=-1))
        per_token = torch.zeros(mask.shape, dtype=per_pos.dtype, device=per_pos.device).masked_scatter(mask, per_pos)
        return per_sample_mean(per_token, mask, lengths).mean()
