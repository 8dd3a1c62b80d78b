"""Representation misdirection (RMU, Li et al. 2024, WMDP): steer the hidden state at one layer towards a fixed random
direction on forget data (``rmu``) while keeping it at the reference's on retain data (``rmu_retain``).

Choices, following the WMDP code: the hidden state is the output of decoder block ``layer`` (0-based; Hugging Face's
``hidden_states[layer + 1]``, the same tensor :meth:`Reference.hidden_states` returns; for the last block that is
after the final norm, so prefer a middle layer as WMDP does); the loss is the mean squared
error over all non-padding tokens (prompt and answer, ``attention_mask == 1``) and over the hidden dimension, i.e.
``mean_tokens ||h - target||^2 / H``; the direction ``u`` is ``rand(H)`` (uniform in [0, 1)) from ``seed``,
normalised to unit length, and the target is ``coeff * u``. WMDP's 6.5 was tuned for Zephyr-7B's layer 7; the
coefficient should be set relative to the activation norm at the chosen layer. (WMDP also trains only the MLPs of
layers ``layer-2 .. layer``; that is a choice of trainable parameters, made outside the objective.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from mollm.objectives import base
from mollm.objectives._common import forward
from mollm.objectives.base import Batch, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:
    from mollm.models.reference import Reference


class RMUOptions(base.Options):
    """``layer`` (None: the middle block), steering ``coeff`` and the ``seed`` of the random direction."""

    layer: int | None = Field(None, ge=0, description="0-based decoder block whose output is steered; None = middle")
    coeff: float = Field(6.5, gt=0.0, description="norm of the steering target coeff * u (WMDP: 6.5 for Zephyr-7B)")
    seed: int = Field(0, description="seed of the fixed random unit vector u")


class RMURetainOptions(base.Options):
    """``layer`` (None: the middle block); must match the ``rmu`` objective's layer."""

    layer: int | None = Field(None, ge=0, description="0-based decoder block whose output is kept; None = middle")


def _num_layers(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def _resolve_layer(name: str, model: torch.nn.Module, layer: int | None) -> int:
    n = _num_layers(model)
    if layer is None:
        if n is None:
            raise ValueError(f"objective '{name}': cannot tell the model's number of layers; set option 'layer'")
        return n // 2
    if n is not None and layer >= n:
        raise ValueError(
            f"objective '{name}': option 'layer' = {layer} is out of range; the model has {n} layers (0..{n - 1})"
        )
    return layer


def _hidden(name: str, model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    states = forward(model, batch, output_hidden_states=True).hidden_states
    if states is None or layer + 1 >= len(states):
        count = "no" if states is None else len(states) - 1
        raise ValueError(
            f"objective '{name}': option 'layer' = {layer} is out of range; the model returned {count} layer outputs"
        )
    return states[layer + 1]


def _token_mask(name: str, batch: Batch, like: torch.Tensor) -> torch.Tensor:
    if "input_ids" not in batch:
        raise ValueError(f"objective '{name}': the batch has no 'input_ids'")
    am = batch.get("attention_mask")
    mask = torch.ones(like.shape[:2], dtype=torch.bool, device=like.device) if am is None else am.bool()
    if not mask.any():
        raise ValueError(f"objective '{name}': the batch has no non-padding token")
    return mask


def _masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    sq = (h.float() - target.float()).pow(2).mean(-1)  # (B, L): mean over the hidden dimension
    return (sq * mask).sum() / mask.sum()


def steering_vector(hidden_size: int, seed: int) -> torch.Tensor:
    """The fixed unit vector ``u`` (float32, CPU) drawn as in WMDP: uniform in [0, 1)^H, normalised."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return u / u.norm()


@register
class RMU(Objective):
    """Forget part: ``MSE(h_layer(x), coeff * u)`` over non-padding tokens, pushing forget activations to noise."""

    name = "rmu"
    Options = RMUOptions

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        layer = _resolve_layer(self.name, model, self.options.layer)
        h = _hidden(self.name, model, batch, layer)
        mask = _token_mask(self.name, batch, h)
        target = self.options.coeff * steering_vector(h.shape[-1], self.options.seed).to(h.device)
        return _masked_mse(h, target, mask)


@register
class RMURetain(Objective):
    """Retain part: ``MSE(h_layer(x), h_layer,ref(x))`` over non-padding tokens (0 while the model is the reference)."""

    name = "rmu_retain"
    Options = RMURetainOptions
    needs_reference = True

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        layer = _resolve_layer(self.name, model, self.options.layer)
        h = _hidden(self.name, model, batch, layer)
        mask = _token_mask(self.name, batch, h)
        h_ref = reference.hidden_states(batch, layer).detach()
        return _masked_mse(h, h_ref, mask)
