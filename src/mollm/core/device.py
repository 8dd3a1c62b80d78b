"""The one place a batch crosses to a model's device (a leaf module: every layer may import it).

Everything that feeds a model — training batches, in-run and ``mollm eval`` evaluation, G-effect probes, generation,
the reference model, judges — calls :func:`to_device`, so a batch built on the host can never reach a model on a GPU
by another road. Tests observe this on a CPU-only machine by wrapping :func:`_place` (see ``tests/test_device.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch

T = TypeVar("T")


def model_device(model: object) -> torch.device:
    """The device of ``model``'s first parameter (its local shard's device under FSDP); CPU for a parameterless one.

    A :class:`~mollm.models.reference.Reference` or any object holding its module in ``_model`` works too."""
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "_model", None)
    if not isinstance(module, torch.nn.Module):
        return torch.device("cpu")
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def default_device() -> torch.device:
    """Where a model loaded for inference (``mollm eval``, ``generate``, ``geffect``) runs: the current CUDA device
    when there is one, else the CPU. Training runs take theirs from accelerate instead."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _place(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # non_blocking: host->GPU copies of (pinned or not) token ids overlap with queued kernels.
    return tensor.to(device, non_blocking=True)


def to_device(batch: T, device: torch.device | str) -> T:
    """``batch`` (a tensor, or a mapping of names to tensors and other values) with every tensor on ``device``.

    A tensor already there is returned as is (``Tensor.to`` is then a no-op), so calling this at every model entry
    point costs nothing on the hot path."""
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return _place(batch, device)  # type: ignore[return-value]
    if isinstance(batch, Mapping):
        return {k: (_place(v, device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}  # type: ignore[return-value]
    raise TypeError(f"to_device: expected a tensor or a mapping of tensors, got {type(batch).__name__}")
