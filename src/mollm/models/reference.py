"""The frozen reference model (the model before unlearning), queried under ``no_grad``.

With a PEFT (LoRA) model the reference is the same model with its adapter disabled, so no second copy is held in
memory; otherwise it is a frozen copy made once at the start of a run.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping

import torch

from mollm.core.device import model_device, to_device
from mollm.core.tokens import token_logprobs


def is_peft(model: torch.nn.Module) -> bool:
    """A PEFT model (adapters that can be disabled to recover the base model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    """Read-only access to the reference model's outputs. Build it with :meth:`from_model` before training starts."""

    def __init__(self, model: torch.nn.Module, *, shares_weights: bool) -> None:
        self._model = model
        self.shares_weights = shares_weights

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> Reference:
        """Snapshot ``model`` as the reference: adapter-disabled view for PEFT models, frozen deep copy otherwise."""
        if is_peft(model):
            return cls(model, shares_weights=True)
        frozen = copy.deepcopy(model)
        frozen.eval()
        frozen.requires_grad_(False)
        return cls(frozen, shares_weights=False)

    @property
    def device(self) -> torch.device:
        """Where the reference's weights (or local shards) live; its inputs are moved there."""
        return model_device(self._model)

    @contextlib.contextmanager
    def _active(self) -> Iterator[torch.nn.Module]:
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.no_grad():
                if self.shares_weights:
                    with self._model.disable_adapter():
                        yield self._model
                else:
                    yield self._model
        finally:
            self._model.train(was_training)

    def forward(self, batch: Mapping[str, torch.Tensor], *, output_hidden_states: bool = False):
        """Run the reference on ``batch`` (input_ids, attention_mask) and return the Hugging Face model output."""
        inputs = to_device(
            {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}, self.device
        )
        with self._active() as model:
            return model(
                **inputs,
                output_hidden_states=output_hidden_states,
            )

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Reference logits, shape (B, L, V)."""
        return self.forward(batch).logits

    def token_logprobs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probability of each answer token and the answer mask (see :func:`mollm.core.tokens.token_logprobs`)."""
        return token_logprobs(self.logits(batch), batch["labels"])

    def hidden_states(self, batch: Mapping[str, torch.Tensor], layer: int) -> torch.Tensor:
        """Reference hidden state after decoder block ``layer`` (0-based), shape (B, L, H)."""
        return self.forward(batch, output_hidden_states=True).hidden_states[layer + 1]
