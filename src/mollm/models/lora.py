"""LoRA adapters (peft) for unlearning only a small set of parameters.

With LoRA, the reference model is the same network with the adapter disabled (see :class:`mollm.models.Reference`),
so no second copy of the model is held in memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

# Output heads are never adapted by default: they are tied to the input embedding in many models (SmolLM2 included).
_HEAD_NAMES = frozenset({"lm_head", "embed_out", "output", "score", "classifier"})
_BLOCK_INDEX = re.compile(r"\.\d+\.")  # linear layers inside a repeated block: "model.layers.3.self_attn.q_proj"


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (carrying an adapter)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel) or (hasattr(model, "peft_config") and hasattr(model, "disable_adapter"))


def _linear_types() -> tuple[type, ...]:
    types: list[type] = [torch.nn.Linear]
    try:  # GPT-2 style models use a transposed Linear called Conv1D, which peft also adapts
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """Names (last path component) of the Linear layers inside the model's repeated blocks, i.e. attention and MLP.

    For Llama this gives ``down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj``; for GPT-2
    ``c_attn, c_fc, c_proj``. Output heads and embeddings are left out. Raises ``ValueError`` if none are found.
    """
    linear = _linear_types()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for full_name, module in model.named_modules():
        if not isinstance(module, linear) or module is head:
            continue
        short = full_name.rsplit(".", 1)[-1]
        if short in _HEAD_NAMES or not _BLOCK_INDEX.search(f".{full_name}."):
            continue
        names.add(short)
    if not names:
        raise ValueError(
            f"found no Linear layers inside repeated blocks of {type(model).__name__}; pass target_modules explicitly "
            "(the names of the attention/MLP projection layers to adapt)"
        )
    return sorted(names)


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
):
    """Wrap ``model`` with a fresh LoRA adapter (task CAUSAL_LM) and return the ``peft.PeftModel``.

    Only the adapter's parameters are trainable afterwards. ``target_modules`` defaults to
    :func:`default_target_modules` (the attention and MLP projections). peft injects the adapter layers into
    ``model`` in place, so keep using the returned object rather than ``model``. The new adapter starts as the
    identity (LoRA's B matrices are zero), so the wrapped model initially gives the same outputs.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if is_lora(model):
        raise ValueError("model already carries a LoRA adapter; apply_lora expects a plain model")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    targets = list(target_modules) if target_modules is not None else default_target_modules(model)
    if not targets:
        raise ValueError("target_modules is empty; give the names of Linear layers to adapt, or None for the default")
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = _linear_types()
        available = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, linear)})
        raise ValueError(
            f"target_modules {missing} are not modules of {type(model).__name__}; its Linear layers are {available}"
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=TaskType.CAUSAL_LM,
        bias="none",
    )
    return get_peft_model(model, config)


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The ``(name, parameter)`` pairs that require a gradient, in module order (only the adapter's for LoRA)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]
