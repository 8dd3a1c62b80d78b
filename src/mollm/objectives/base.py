"""The objective interface: a loss to minimise, computed from a model and one tokenised batch.

A batch is :data:`mollm.core.tokens.Batch` (answer tokens labelled, everything else ``IGNORE_INDEX``). Objectives
needing the frozen reference model receive a :class:`~mollm.models.reference.Reference`, whose outputs are computed
under ``no_grad``.

Objectives that act on the model only through their batch's answer log-probabilities also say what their gradient
is as a weighted gradient ascent (:meth:`Objective.implicit_weights`, :class:`GradWeights`); the G-effect toolkit
reads the weights from there, so each formula lives next to its loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mollm.core.registry import Options as _Options
from mollm.core.registry import build_options
from mollm.core.tokens import IGNORE_INDEX, Batch, token_logprobs

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class Options(_Options):
    """Base class of an objective's options; unknown keys are errors (a typo must not pass silently)."""


@dataclass(frozen=True)
class GradWeights:
    """An objective's gradient on one batch written as a weighted gradient ascent (the G-effect paper's view).

    With ``lp_it = log p_theta(y_it | x_i, y_i<t)`` the log-probability of answer token ``t`` of sample ``i``, ``B``
    the batch size and ``T_i`` the number of answer tokens of sample ``i``::

        grad L = (1/B) sum_i (1/T_i) sum_t token[i, t] * grad lp_it        (token[i, t] held constant)
               = (1/B) sum_i (1/T_i) sum_t -token[i, t] * grad(-lp_it)      (a weighted NLL gradient)

    The scale is gradient ascent's: GA (``L = -CE``) has ``token == 1`` and plain descent (``nll``) ``token == -1``,
    so ``token`` says how much harder (> 1) or softer (< 1) than GA a token is pushed down, and negative means up.

    Attributes (detached, in ``logp``'s dtype, on its device):
        token: (B, L-1), aligned with :func:`~mollm.core.tokens.token_logprobs` (position ``t`` scores
            ``labels[:, t+1]``); 0 off the answer mask.
        sample: (B,), one weight per sample. For objectives that weight whole sequences (``npo``, ``simnpo``) it is
            the sequence-level weight ``s_i`` (npo: on the *summed* log-prob, so ``token = T_i s_i``; simnpo:
            ``token = s_i``); otherwise the mean of ``token`` over the sample's answer tokens.
        logp: (B, L-1), the model's answer log-probs the weights were computed from (0 off the mask).
        mask: (B, L-1) bool, the answer mask.
    """

    token: torch.Tensor
    sample: torch.Tensor
    logp: torch.Tensor
    mask: torch.Tensor


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

    def implicit_weights(
        self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None
    ) -> GradWeights | None:
        """This objective's gradient on ``batch`` as a weighted GA gradient (see :class:`GradWeights`), or ``None``.

        ``None`` means the objective has no such form: it does not act on the model only through the answer
        log-probs of ``batch`` (``kl`` reads the whole vocabulary, ``rmu`` hidden states). One forward pass of
        ``model`` (and of ``reference`` if the objective needs it), without gradient; a float64 model's log-probs
        stay float64 (the loss's own are float32, so the two agree to float32 rounding).

        Raises:
            ValueError: the objective needs the reference and none was given, a batch key is missing, or a sample
                has no answer token.
        """
        if not self.has_implicit_weights():
            return None  # no formula: skip the forward pass
        if self.needs_reference and reference is None:
            raise ValueError(f"objective '{self.name}' needs the reference model, but none was given")
        # Lazy: _common imports this module.
        from mollm.objectives._common import model_logprobs  # noqa: PLC0415

        with torch.no_grad():
            logp, mask, _ = model_logprobs(self.name, model, batch, keep_float64=True)
            ref_logp = reference.token_logprobs(batch)[0] if (reference is not None and self.needs_reference) else None
        return self.weights_from_logprobs(logp, mask, ref_logp)

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights | None:
        """:meth:`implicit_weights` from precomputed answer log-probs: the objective's formula itself.

        Args:
            logp: the model's answer log-probs (B, L-1) (as from :func:`~mollm.core.tokens.token_logprobs`).
            mask: the answer mask (B, L-1); positions off it never count, whatever ``logp`` holds there.
            ref_logp: the reference's answer log-probs, for objectives that need the reference.

        Returns ``None`` here (no such form); objectives with one override it next to their loss.
        """
        return None

    @classmethod
    def has_implicit_weights(cls) -> bool:
        """Whether the objective has implicit weights, i.e. overrides :meth:`weights_from_logprobs`."""
        return cls.weights_from_logprobs is not Objective.weights_from_logprobs

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"


__all__ = ["IGNORE_INDEX", "Batch", "GradWeights", "Objective", "Options", "token_logprobs"]
