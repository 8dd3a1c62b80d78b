"""How a run spreads over processes: one process, data parallel (``ddp``) or sharded (``fsdp``, PyTorch's FSDP2).

Launch is always PyTorch's or accelerate's (``torchrun -m mollm unlearn CFG`` / ``accelerate launch -m mollm ...``);
the process group comes from accelerate. The multi-objective step (``engine/step.py``) knows rows, Gramians and the
combination; a strategy only says where the model lives, how a gradient row is reduced and how a Gramian is summed:

* ``single``: the model on the one device; no reduction.
* ``ddp``: every process holds the whole model and draws its own batches. Each objective's gradient row is
  all-reduced (averaged) asynchronously as soon as its backward is done, so the traffic overlaps the next objective's
  compute: m all-reduces of n numbers per step, against one for a summed-loss step.
* ``fsdp``: ``fully_shard`` on every decoder block (the classes the model names in ``_no_split_modules``) and the
  root. Each objective's backward reduce-scatters into this process's shards, which fill its (m, n_local) rows; the
  partial Gramians are all-reduced (m × m numbers), so every process gets the same coefficients and combines its own
  shards; the optimizer steps on sharded parameters. The reference model is sharded too (LoRA: the adapter-disabled
  model itself, no copy). With ``distributed.shard_size`` (HSDP, e.g. across nodes) the mesh is 2-D: shards within
  groups of that many processes, replicas across groups; FSDP averages over both, and the partial Gramians are
  summed within a shard group only.

Not wrapped in ``DistributedDataParallel``: the step runs m backward passes per update and reduces rows itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from mollm.models.reference import Reference

StrategyName = Literal["single", "ddp", "fsdp"]


class DistributedError(RuntimeError):
    """A distributed set-up mollm cannot run (an unsupported launcher, a model FSDP cannot shard, ...)."""


class _Average:
    """Data-parallel reduction: every process holds whole rows; rows and losses are averaged across processes."""

    def __init__(self, world: int) -> None:
        self.world = world

    def start_row(self, row: torch.Tensor) -> Callable[[], None]:
        work = torch.distributed.all_reduce(row, op=torch.distributed.ReduceOp.SUM, async_op=True)

        def wait() -> None:
            work.wait()
            row.div_(self.world)

        return wait

    def mean_(self, values: torch.Tensor) -> None:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        values.div_(self.world)

    def sum_gramian_(self, gramian: torch.Tensor) -> None:
        pass  # rows are already the global mean gradients, so the local Gramian is the global one


class _Sharded(_Average):
    """FSDP2 reduction: FSDP's reduce-scatter already averaged each row's shards; the partial Gramians of one shard
    group add up to the whole Gramian (under HSDP every replica group holds the same shards, so only ``group``)."""

    def __init__(self, world: int, group: Any = None) -> None:
        super().__init__(world)
        self.group = group

    def start_row(self, row: torch.Tensor) -> Callable[[], None]:
        return lambda: None

    def sum_gramian_(self, gramian: torch.Tensor) -> None:
        torch.distributed.all_reduce(gramian, op=torch.distributed.ReduceOp.SUM, group=self.group)


class Strategy:
    """One process: the model is moved to the accelerator's device; nothing is reduced."""

    name: StrategyName = "single"

    def __init__(self, accelerator: Accelerator, mixed_precision: str = "no") -> None:
        self.accelerator = accelerator
        self.mixed_precision = mixed_precision
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.device = accelerator.device

    @property
    def reduction(self) -> _Average | None:
        """What the step uses to combine rows, losses and Gramians across processes (``None``: one process)."""
        return None

    @property
    def evaluates_on_every_process(self) -> bool:
        """Sharded weights need every process in each forward pass; whole models are evaluated by the main one."""
        return False

    def prepare(self, model: torch.nn.Module, *, needs_reference: bool) -> tuple[torch.nn.Module, Reference | None]:
        """Place (or shard) the model for training and build the reference model from its current weights."""
        from mollm.models.reference import Reference

        model.to(self.device)
        return model, (Reference.from_model(model) if needs_reference else None)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the main process (a collective under FSDP: every process must call it)."""
        return None  # the main process's model object is whole: save it as it is

    def rebuild_on_main(self, state: dict[str, torch.Tensor] | None, model: torch.nn.Module) -> torch.nn.Module:
        """An ordinary (unsharded) model to save as a Hugging Face folder on the main process."""
        return model


class DataParallel(Strategy):
    """``ddp``: whole model on every process, each objective's gradient row averaged across processes."""

    name: StrategyName = "ddp"

    @property
    def reduction(self) -> _Average:
        return _Average(self.world)

    def prepare(self, model: torch.nn.Module, *, needs_reference: bool) -> tuple[torch.nn.Module, Reference | None]:
        model.to(self.device)
        _broadcast_from_main(model, self.device)
        return super().prepare(model, needs_reference=needs_reference)


class FullySharded(Strategy):
    """``fsdp``: FSDP2 ``fully_shard`` per decoder block and on the root; see the module docstring."""

    name: StrategyName = "fsdp"

    def __init__(self, accelerator: Accelerator, mixed_precision: str = "no", shard_size: int | None = None) -> None:
        super().__init__(accelerator, mixed_precision)
        self._skeleton: torch.nn.Module | None = None
        size = shard_size or self.world
        if self.world % size:
            raise DistributedError(f"distributed.shard_size={size} does not divide the {self.world} processes")
        from torch.distributed.device_mesh import init_device_mesh

        kind = self.device.type
        if size == self.world:
            self.mesh = init_device_mesh(kind, (self.world,))
            self._group = None
        else:  # HSDP: replicate across groups (e.g. nodes), shard within each
            self.mesh = init_device_mesh(kind, (self.world // size, size), mesh_dim_names=("replicate", "shard"))
            self._group = self.mesh.get_group("shard")

    @property
    def reduction(self) -> _Sharded:
        return _Sharded(self.world, self._group)

    @property
    def evaluates_on_every_process(self) -> bool:
        return True

    def _shard(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        blocks = shard_units(model)
        policy = MixedPrecisionPolicy()
        if self.mixed_precision == "bf16":
            # bf16 all-gathers and compute; gradients reduce-scatter in float32 into float32 shards.
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        return model

    def prepare(self, model: torch.nn.Module, *, needs_reference: bool) -> tuple[torch.nn.Module, Reference | None]:
        from mollm.models.reference import Reference, is_peft

        # The whole model stays on the host: fully_shard moves only this process's shards to the device, so a model
        # larger than one device's memory is never materialised on it.
        _broadcast_from_main(model, self.device)
        if self.accelerator.is_main_process:
            self._skeleton = _meta_twin(model)
        reference = None
        if needs_reference and not is_peft(model):
            frozen = copy.deepcopy(model)
            frozen.eval().requires_grad_(False)
            reference = Reference(self._shard(frozen), shares_weights=False)
        model = self._shard(model)
        if needs_reference and reference is None:
            reference = Reference.from_model(model)  # LoRA: the sharded model with its adapter disabled
        return model, reference

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        return state if self.accelerator.is_main_process else None

    def rebuild_on_main(self, state: dict[str, torch.Tensor] | None, model: torch.nn.Module) -> torch.nn.Module:
        if self._skeleton is None or state is None:
            raise DistributedError("rebuild_on_main: only the main process holds the gathered weights")
        whole = self._skeleton.to_empty(device="cpu")
        missing, unexpected = whole.load_state_dict(state, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")}
        if set(missing) - tied or unexpected:
            raise DistributedError(
                f"gathered weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if hasattr(whole, "tie_weights"):
            whole.tie_weights()
        return whole


def _meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose weights are on the meta device (no memory), to rebuild the whole model into for the
    final Hugging Face folder. The memo makes deepcopy take a meta tensor for every weight instead of copying it
    (tied weights stay one object)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _broadcast_from_main(model: torch.nn.Module, device: torch.device) -> None:
    """Every process starts from the main process's weights (a model built in code may differ by seed). One tensor
    at a time through ``device``, since NCCL broadcasts device memory only."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device == device:
            torch.distributed.broadcast(tensor.data, src=0)
        else:
            moved = tensor.data.to(device)
            torch.distributed.broadcast(moved, src=0)
            tensor.data.copy_(moved)


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP shards one by one: instances of the classes the model lists in ``_no_split_modules``
    (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ``GPT2Block``, ...), found through any PEFT wrapper."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    if not names:
        raise DistributedError(
            f"distributed.strategy=fsdp: {type(model).__name__} names no decoder block class in _no_split_modules, "
            "so there is nothing to shard block by block"
        )
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise DistributedError(f"distributed.strategy=fsdp: no module of the classes {sorted(names)} in the model")
    return units


def make_strategy(
    accelerator: Accelerator,
    requested: StrategyName | None,
    mixed_precision: str = "no",
    shard_size: int | None = None,
) -> Strategy:
    """The strategy for this launch: ``requested`` (``distributed.strategy``), or ``ddp`` when several processes run
    and ``single`` otherwise. accelerate's own FSDP/DeepSpeed plugins are refused: mollm shards with FSDP2 itself."""
    from accelerate.utils import DistributedType

    world, kind = accelerator.num_processes, accelerator.distributed_type
    if world > 1 and kind not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise DistributedError(
            f"{kind}: launch with plain torchrun or 'accelerate launch' (multi-CPU/GPU) and set "
            "distributed.strategy: fsdp in the run config; mollm applies FSDP2 itself (accelerate's FSDP plugin "
            "falls back to data parallelism on CPU, and its sharding does not expose the per-objective rows)"
        )
    name = requested or "ddp"
    if name != "single" and world == 1:
        name = "single"  # one process: data parallelism and a 1-rank shard are both the plain step
    if name == "single" and world > 1:
        raise DistributedError(f"distributed.strategy=single, but {world} processes were launched")
    if name == "fsdp":
        return FullySharded(accelerator, mixed_precision, shard_size)
    return (DataParallel if name == "ddp" else Strategy)(accelerator, mixed_precision)


def describe(strategy: Strategy) -> dict[str, Any]:
    """What ``run.json`` records about the launch."""
    return {"strategy": strategy.name, "processes": strategy.world}
