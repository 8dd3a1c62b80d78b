"""The batch type every stage shares, and the log-probability of each answer token.

A batch is the Hugging Face convention: ``input_ids``, ``attention_mask`` and ``labels`` (long tensors of shape
(B, L)); ``labels`` equals ``input_ids`` on answer tokens and ``IGNORE_INDEX`` everywhere else, so prompt and
padding tokens never count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Batch = Mapping[str, torch.Tensor]
IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every label token and the answer mask, both shaped (B, L-1).

    Position t of the result scores ``labels[:, t+1]`` from ``logits[:, t]`` (the causal shift). Masked positions
    hold 0 so sums over the mask are safe.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels.ne(IGNORE_INDEX)
    safe_labels = shift_labels.masked_fill(~mask, 0)
    # log_softmax + gather in float32 for stability; cross_entropy avoids materialising a second (B, L, V) tensor.
    logp = -torch.nn.functional.cross_entropy(
        shift_logits.float().reshape(-1, shift_logits.size(-1)), safe_labels.reshape(-1), reduction="none"
    ).view_as(safe_labels)
    return logp * mask, mask
