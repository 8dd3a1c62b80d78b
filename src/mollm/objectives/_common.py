"""Shared pieces of the objectives: one forward pass, answer log-probs and per-sample means."""

from __future__ import annotations

import torch

from mollm.objectives.base import Batch, token_logprobs


def forward(model: torch.nn.Module, batch: Batch, *, output_hidden_states: bool = False):
    """Run ``model`` on the batch's inputs (never its labels, so no Hugging Face loss is computed)."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        output_hidden_states=output_hidden_states,
    )


def check_batch(name: str, batch: Batch) -> None:
    """Raise a clear error when the batch lacks a key the objectives read."""
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise ValueError(f"objective '{name}': the batch has no '{key}' (keys: {', '.join(batch)})")


def answer_lengths(name: str, mask: torch.Tensor) -> torch.Tensor:
    """Number of answer tokens per sample, shape (B,), float. A sample without any is an error (it would give 0/0)."""
    lengths = mask.sum(-1)
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"objective '{name}': batch row(s) {empty} have no answer token (all labels are -100 after the causal "
            "shift); every sample needs at least one answer token"
        )
    return lengths.to(torch.float32)


def model_logprobs(name: str, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward: answer-token log-probs (B, L-1), the answer mask and the answer lengths (B,)."""
    check_batch(name, batch)
    logits = forward(model, batch).logits
    logp, mask = token_logprobs(logits, batch["labels"])
    return logp, mask, answer_lengths(name, mask)


def per_sample_mean(values: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each sample's answer positions, shape (B,)."""
    return (values * mask).sum(-1) / lengths
