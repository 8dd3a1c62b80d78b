"""Shared pieces of the objectives: one forward pass, answer log-probs, per-sample means and implicit weights.

The G-effect toolkit uses the same helpers for its risk (the answer NLL), so answer log-probs are computed in one place.
"""

from __future__ import annotations

import torch

from mollm.core.tokens import IGNORE_INDEX, Batch, token_logprobs
from mollm.objectives.base import GradWeights


def _who(name: str, who: str | None) -> str:
    return who if who is not None else f"objective '{name}'"


def forward(model: torch.nn.Module, batch: Batch, *, output_hidden_states: bool = False):
    """Run ``model`` on the batch's inputs (never its labels, so no Hugging Face loss is computed)."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        output_hidden_states=output_hidden_states,
    )


def check_batch(name: str, batch: Batch, *, who: str | None = None) -> None:
    """Raise a clear error when the batch lacks a key the objectives read.

    The message names ``who`` (default ``objective '<name>'``), e.g. ``forget_batch`` for the G-effect's risk.
    """
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise ValueError(f"{_who(name, who)}: the batch has no '{key}' (keys: {', '.join(batch)})")


def answer_lengths(name: str, mask: torch.Tensor, *, who: str | None = None) -> torch.Tensor:
    """Number of answer tokens per sample, shape (B,), float. A sample without any is an error (it would give 0/0)."""
    lengths = mask.sum(-1)
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{_who(name, who)}: batch row(s) {empty} have no answer token (all labels are -100 after the causal "
            "shift); every sample needs at least one answer token"
        )
    return lengths.to(torch.float32)


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~mollm.core.tokens.token_logprobs`, except that float64 logits stay float64.

    ``token_logprobs`` computes in float32 (what training wants); the G-effect's first-order check on a float64 model
    needs float64 risks, so this is the one float64 path.
    """
    if logits.dtype != torch.float64:
        return token_logprobs(logits, labels)
    shift_labels = labels[:, 1:]
    mask = shift_labels.ne(IGNORE_INDEX)
    safe = shift_labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def model_logprobs(
    name: str, model: torch.nn.Module, batch: Batch, *, who: str | None = None, keep_float64: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward: answer-token log-probs (B, L-1), the answer mask and the answer lengths (B,).

    ``keep_float64``: a float64 model's log-probs stay float64 (:func:`answer_logprobs`); the losses keep the default
    float32. ``who`` names the caller in errors (default ``objective '<name>'``).
    """
    check_batch(name, batch, who=who)
    logits = forward(model, batch).logits
    logp, mask = (answer_logprobs if keep_float64 else token_logprobs)(logits, batch["labels"])
    return logp, mask, answer_lengths(name, mask, who=who)


def per_sample_mean(values: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each sample's answer positions, shape (B,)."""
    return (values * mask).sum(-1) / lengths


def reference_logprobs(name: str, ref_logp: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The reference's log-probs for a weight formula, detached and in ``like``'s dtype; ``None`` is an error."""
    if ref_logp is None:
        raise ValueError(f"objective '{name}' needs the reference log-probs (ref_logp) for its implicit weights")
    return ref_logp.detach().to(like.dtype)


def token_level_weights(name: str, token: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> GradWeights:
    """:class:`GradWeights` from per-token weights (zeroed off the mask); the sample weight is their mean."""
    mask = mask.bool()
    token = token.detach() * mask
    return GradWeights(
        token=token,
        sample=per_sample_mean(token, mask, answer_lengths(name, mask)),
        logp=logp.detach() * mask,
        mask=mask,
    )


def sequence_level_weights(
    sample: torch.Tensor, per_token: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor
) -> GradWeights:
    """:class:`GradWeights` of a sequence-level objective: weight ``sample`` (B,), token weight ``per_token`` (B,)."""
    mask = mask.bool()
    return GradWeights(
        token=per_token.detach().unsqueeze(-1) * mask, sample=sample.detach(), logp=logp.detach() * mask, mask=mask
    )
