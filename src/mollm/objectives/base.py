"""The objective interface: a loss to minimise, computed from a model and one tokenised batch.

A batch is :data:`mollm.core.tokens.Batch` (answer tokens labelled, everything else ``IGNORE_INDEX``). Objectives
needing the frozen reference model receive a :class:`~mollm.models.reference.Reference`, whose outputs are computed
under ``no_grad``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mollm.core.registry import Options as _Options
from mollm.core.registry import build_options
from mollm.core.tokens import IGNORE_INDEX, Batch, token_logprobs

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class Options(_Options):
    """Base class of an objective's options; unknown keys are errors (a typo must not pass silently)."""


class Objective(ABC):
    """A loss to minimise. Subclasses set ``name``, ``Options`` and implement :meth:`loss`."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    needs_reference: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = build_options("objective", self.name, self.Options, options)

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


__all__ = ["IGNORE_INDEX", "Batch", "Objective", "Options", "token_logprobs"]
