"""Parameter groups for the per-layer G-effect, derived from a causal LM's structure (not hard-coded to one model).

The groups are found from the module tree of any Hugging Face causal LM:

- ``embedding``: the parameters of ``model.get_input_embeddings()``;
- ``block.<i>``: the parameters of decoder block ``i``, where the blocks are the longest ``nn.ModuleList`` whose
  children share one class (``model.layers``, ``transformer.h``, ...); blocks are also labelled ``shallow``,
  ``middle`` or ``deep`` (thirds of the stack, the first third taking the remainder first);
- ``head``: the parameters of ``model.get_output_embeddings()``;
- ``final_norm``: any other parameter whose module name contains ``norm`` (the norm after the last block);
- ``other``: anything else (e.g. learned position embeddings living outside the embedding module).

Only trainable parameters (``requires_grad``) are grouped, so a LoRA (peft) model is grouped over its adapter
parameters alone, each under the block that holds it. A weight shared by two modules (tied input/output
embeddings) is counted once, under ``embedding``, and :attr:`ParamGroups.tied` says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

DEPTHS: tuple[str, ...] = ("shallow", "middle", "deep")


@dataclass
class ParamGroups:
    """The trainable parameters of a model, each assigned to one group.

    Attributes:
        names: parameter names, in ``model.named_parameters()`` order (shared tensors listed once).
        params: the parameter tensors, aligned with ``names``.
        group_of: the group of each parameter (``embedding``, ``block.<i>``, ``final_norm``, ``head``, ``other``).
        groups: group names in model order (embedding, blocks shallow to deep, final_norm, head, other).
        depth_of_group: for each block group, ``shallow`` / ``middle`` / ``deep``; other groups map to themselves.
        tied: human-readable notes on shared tensors, e.g. ``"lm_head.weight is model.embed_tokens.weight ..."``.
        blocks_path: the module path of the block list (``model.layers``), or ``None`` if none was found.
        n_blocks: number of decoder blocks found.
    """

    names: list[str]
    params: list[torch.nn.Parameter]
    group_of: list[str]
    groups: list[str]
    depth_of_group: dict[str, str]
    tied: list[str] = field(default_factory=list)
    blocks_path: str | None = None
    n_blocks: int = 0

    @property
    def numel(self) -> int:
        """Total number of trainable scalars grouped (shared tensors once)."""
        return sum(p.numel() for p in self.params)

    def group_numel(self) -> dict[str, int]:
        """Number of trainable scalars in each group."""
        out = {g: 0 for g in self.groups}
        for g, p in zip(self.group_of, self.params):
            out[g] += p.numel()
        return out

    def coarse_groups(self) -> list[str]:
        """The coarse view in model order: embedding, shallow, middle, deep, final_norm, head, other (present ones)."""
        seen: list[str] = []
        for g in self.groups:
            d = self.depth_of_group[g]
            if d not in seen:
                seen.append(d)
        return seen


def _find_blocks(model: nn.Module) -> tuple[str | None, nn.ModuleList | None]:
    """The decoder block list: the longest ModuleList of same-class modules (ties: most parameters)."""
    best: tuple[int, int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(m) for m in module}
        if len(classes) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        key = (len(module), size)
        if best is None or key > best[:2]:
            best = (len(module), size, name, module)
    if best is None:
        return None, None
    return best[2], best[3]


def _depth_labels(n: int) -> list[str]:
    """Split ``n`` blocks into thirds (as ``numpy.array_split`` does: the first parts take the remainder)."""
    base, extra = divmod(n, 3)
    labels: list[str] = []
    for k, depth in enumerate(DEPTHS):
        labels += [depth] * (base + (1 if k < extra else 0))
    return labels


def _param_ids(module: nn.Module | None) -> set[int]:
    if module is None:
        return set()
    return {id(p) for p in module.parameters()}


def _named_modules_of_params(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            yield mod_name, module, p_name, p


def param_groups(model: nn.Module, *, trainable_only: bool = True) -> ParamGroups:
    """Group ``model``'s parameters by layer (see the module docstring for the rules).

    Args:
        model: a Hugging Face causal LM (plain or peft-wrapped) or any module exposing ``get_input_embeddings``.
        trainable_only: keep only parameters with ``requires_grad`` (the default; for LoRA, the adapters).

    Raises:
        ValueError: the model has no (trainable) parameter.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb_ids, head_ids = _param_ids(emb), _param_ids(head)
    blocks_path, blocks = _find_blocks(model)
    block_of: dict[int, int] = {}
    if blocks is not None:
        for i, block in enumerate(blocks):
            for p in block.parameters():
                block_of.setdefault(id(p), i)
    n_blocks = len(blocks) if blocks is not None else 0
    depth = _depth_labels(n_blocks)

    # Every module that owns each tensor, to report sharing (tied weights) honestly.
    owners: dict[int, list[str]] = {}
    for mod_name, _, p_name, p in _named_modules_of_params(model):
        full = f"{mod_name}.{p_name}" if mod_name else p_name
        if full not in owners.setdefault(id(p), []):
            owners[id(p)].append(full)

    names: list[str] = []
    params: list[nn.Parameter] = []
    group_of: list[str] = []
    tied: list[str] = []
    for name, p in model.named_parameters():  # remove_duplicate=True: a shared tensor appears once
        if trainable_only and not p.requires_grad:
            continue
        pid = id(p)
        if pid in emb_ids:
            group = "embedding"
        elif pid in block_of:
            group = f"block.{block_of[pid]}"
        elif pid in head_ids:
            group = "head"
        elif "norm" in name.rsplit(".", 1)[0].lower():
            group = "final_norm"
        else:
            group = "other"
        names.append(name)
        params.append(p)
        group_of.append(group)
        if len(owners.get(pid, [])) > 1:
            others = [o for o in owners[pid] if o != name]
            tied.append(f"{', '.join(others)} is {name} (shared tensor): counted once, under '{group}'")
    if not params:
        raise ValueError(
            "model has no trainable parameter (every requires_grad is False); unfreeze the parameters to analyse "
            "(for LoRA, the adapter) before computing G-effects"
        )
    order = ["embedding"] + [f"block.{i}" for i in range(n_blocks)] + ["final_norm", "head", "other"]
    present = set(group_of)
    groups = [g for g in order if g in present]
    depth_of_group = {g: (depth[int(g.split(".")[1])] if g.startswith("block.") else g) for g in groups}
    return ParamGroups(
        names=names,
        params=params,
        group_of=group_of,
        groups=groups,
        depth_of_group=depth_of_group,
        tied=tied,
        blocks_path=blocks_path,
        n_blocks=n_blocks,
    )
