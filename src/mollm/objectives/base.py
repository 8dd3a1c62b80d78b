"""The objective interface: a loss to minimise, computed from a model and one tokenised batch.

A batch is the Hugging Face convention: ``input_ids``, ``attention_mask`` and ``labels`` (long tensors of shape
(B, L)); ``labels`` equals ``input_ids`` on answer tokens and ``-100`` everywhere else, so prompt and padding tokens
never count. Objectives needing the frozen reference model receive a :class:`~mollm.models.reference.Reference`,
whose outputs are computed under ``no_grad``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from mollm.models.reference import Reference

Batch = Mapping[str, torch.Tensor]
IGNORE_INDEX = -100


class Options(BaseModel):
    """Base class of an objective's options; unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(ABC):
    """A loss to minimise. Subclasses set ``name``, ``Options`` and implement :meth:`loss`."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    needs_reference: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        """Return the scalar loss (averaged over the batch) for ``batch``."""

    def __call__(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        if self.needs_reference and reference is None:
            raise ValueError(f"objective '{self.name}' needs the reference model, but none was given")
        return self.loss(model, batch, reference)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"


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
