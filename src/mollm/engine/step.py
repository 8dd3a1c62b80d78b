"""The multi-objective step: per-objective gradients, their Gramian, aggregated coefficients, the combined gradient.

How it stays as cheap as one backward pass of the summed loss (numbers in ``shared/notes/setting.md``):

* Each objective's forward + backward runs one after the other, so only one autograd graph is alive at a time.
* All per-objective gradients live in ONE preallocated flat buffer of shape (m, n) (n = number of trainable
  scalars). During objective i's backward, a post-accumulate hook copies each parameter's gradient into its view of
  row i as soon as it is ready and drops it (later contributions, e.g. micro-batches, are added), so there is no
  ``torch.cat`` of flattened gradients, no unflattening afterwards and no pass zeroing the buffer (only the slices of
  parameters an objective does not reach are zeroed). FSDP2 shards instead point ``.grad`` at a view of row i, zeroed
  first, and the reduce-scatter accumulates straight into it.
* The Gramian G = B Bᵀ is a few small matrix products over column chunks, summed in float64 (a single float32
  product over 10⁸ columns loses ~3 % of relative accuracy), and the aggregator solves on the m × m matrix.
* The combined gradient d = Σ c_i g_i is formed in place in the last row, which the parameters' ``.grad`` already
  point at, so any torch optimizer can step on it. Extra memory over a plain backward: (m − 1) × trainable bytes.

The buffer is reused across steps and reallocated only when the set of trainable parameters changes.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mollm.core.atomic import json_safe
from mollm.core.device import model_device, to_device

if TYPE_CHECKING:
    from mollm.models.reference import Reference
    from mollm.objectives.base import Batch

LossClosure = Callable[[], torch.Tensor]
Aggregator = Callable[[torch.Tensor], torch.Tensor]

# Columns per partial Gramian: float32 products over 2^18 columns keep ~1e-6 relative error, and the partial
# sums are accumulated in float64. Larger chunks are no faster (memory bound), smaller ones pay call overhead.
_GRAMIAN_CHUNK = 1 << 18
# (G c)_i counts as a conflict only below -_CONFLICT_RTOL * ‖g_i‖ ‖d‖ (a cosine of -1e-6), so rounding on an
# exactly orthogonal or zero gradient is not reported as a conflict.
_CONFLICT_RTOL = 1e-6


@dataclass
class StepStats:
    """What one multi-objective step measured. All lists are indexed like ``names``.

    ``decrease`` holds (G c)_i = ⟨g_i, d⟩, the first-order decrease of objective i per unit learning rate when the
    optimizer steps along -d; ``conflict`` is true when some (G c)_i is negative (the step increases that objective
    to first order). When ``finite`` is false the step was abandoned: ``bad_objective`` names the objective whose
    loss or gradient was not finite (``None`` if the aggregator produced non-finite coefficients), ``reason``
    says which, and the gradient statistics are empty.
    """

    names: list[str]
    losses: list[float | None]
    grad_norms: list[float] = field(default_factory=list)
    cosines: list[list[float]] = field(default_factory=list)
    coefficients: list[float] = field(default_factory=list)
    decrease: list[float] = field(default_factory=list)
    conflict: bool = False
    direction_norm: float = 0.0
    finite: bool = True
    bad_objective: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    clip_scale: float = 1.0  # factor applied to d by ``max_norm`` clipping (1: not clipped)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; non-finite numbers become ``None`` (strict JSON has no NaN)."""
        return json_safe(asdict(self))


def trainable_parameters(model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters with ``requires_grad`` (each once, in order): full fine-tuning or only LoRA adapters."""
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    seen: set[int] = set()
    out: list[torch.nn.Parameter] = []
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters: expected torch tensors, got {type(p).__name__}")
        if p.requires_grad and id(p) not in seen:  # tied weights (embeddings / lm_head) appear once
            seen.add(id(p))
            out.append(p)
    return out


def _check_loss(loss: Any, name: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"objective '{name}': the loss closure must return a scalar tensor, got {shape}")
    if not loss.requires_grad:
        raise ValueError(
            f"objective '{name}': the loss does not require grad (computed under no_grad, or it reaches no "
            "trainable parameter)"
        )
    return loss.reshape(())


class Reduction(Protocol):
    """How several processes combine what each computed; ``engine/distributed.py`` implements it for DDP and FSDP.

    The step calls ``start_row`` right after objective i's backward (so a data-parallel all-reduce of that row runs
    under the next objective's compute) and every returned ``wait`` before the Gramian; ``mean_`` averages the
    losses; ``sum_gramian_`` adds the partial Gramians of sharded rows (a no-op when every process holds whole rows).
    """

    def start_row(self, row: torch.Tensor) -> Callable[[], None]: ...

    def mean_(self, values: torch.Tensor) -> None: ...

    def sum_gramian_(self, gramian: torch.Tensor) -> None: ...


class MultiObjectiveStep:
    """Combine the gradients of m objectives with a Gramian-based aggregator and leave the result in ``.grad``.

    Example::

        step = MultiObjectiveStep(model, get("ds_mgda"), names=["forget", "normal", "retain"])
        optimizer.zero_grad()
        stats = step([lambda: uce(model, fb), lambda: kl(model, nb, ref), lambda: nll(model, rb)])
        if stats.finite:
            optimizer.step()

    After a finite step every trainable parameter's ``.grad`` holds its slice of d = Σ c_i g_i (it REPLACES any
    previous ``.grad``; it does not accumulate into it). The ``.grad`` tensors are views of an internal buffer that
    the next call overwrites, so consume them (``optimizer.step()``) before calling again. After a non-finite step
    ``.grad`` is restored to what it was before the call, except gradients that were views of this step's own
    buffer (left from its previous call): those are set to ``None``, since the buffer was reused.

    Args:
        model_or_params: a model (its parameters with ``requires_grad`` are used, re-read at every call so
            freezing or unfreezing is picked up) or an explicit list of parameters. Parameters may be FSDP2 shards
            (DTensors): each row then holds this process's shard of every gradient.
        aggregator: maps the (m, m) float64 Gramian to m coefficients, e.g. ``mollm.aggregators.get("mgda")``.
        names: one label per objective, used in the statistics; defaults to "0", "1", ...
        reduction: in a multi-process run, how rows, losses and Gramians are combined across processes
            (:class:`Reduction`); every process then computes the same coefficients and update.
        grad_dtype: dtype of the (m, n) buffer (default: the parameters' dtype). When it differs (e.g. bfloat16
            rows for float32 weights) each gradient is copied into its row by a post-accumulate hook instead of being
            accumulated there in place; the Gramian is still summed in float64.
        max_norm: clip the combined gradient to this norm (‖d‖ = sqrt(cᵀ G c) comes from the Gramian, so clipping
            needs no pass over the parameters and is the same for any number of processes or shards).
    """

    def __init__(
        self,
        model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter],
        aggregator: Aggregator,
        *,
        names: Sequence[str] | None = None,
        reduction: Reduction | None = None,
        grad_dtype: torch.dtype | None = None,
        max_norm: float | None = None,
    ) -> None:
        if not callable(aggregator):
            raise TypeError(f"aggregator: expected a callable Gramian -> coefficients, got {type(aggregator).__name__}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm: expected a positive number or None, got {max_norm}")
        self._source: torch.nn.Module | list[torch.nn.Parameter] = (
            model_or_params if isinstance(model_or_params, torch.nn.Module) else list(model_or_params)
        )
        self.aggregator = aggregator
        self.names = list(names) if names is not None else None
        self.reduction = reduction
        self.grad_dtype = grad_dtype
        self.max_norm = max_norm
        self._params: list[torch.nn.Parameter] = []
        self._signature: tuple[Any, ...] | None = None
        self._buffer: torch.Tensor | None = None
        self._row_views: list[list[torch.Tensor]] = []  # local (shard) views of each row, one per parameter
        self._row_grads: list[list[torch.Tensor]] = []  # what .grad is set to for row i (DTensor-wrapped shards)
        self._hooks: list[Any] = []  # post-accumulate hooks copying gradients into the rows (all but in-place shards)
        self._active_row: int | None = None
        self._written: list[bool] = []  # which parameters' slices of the active row hold this step's gradient

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the gradient buffer (m × trainable bytes; 0 before the first call)."""
        return 0 if self._buffer is None else self._buffer.numel() * self._buffer.element_size()

    @property
    def _same_dtype(self) -> bool:
        """Buffer and weights share a dtype: the combined row is exposed as ``.grad`` without a conversion."""
        return self._buffer is not None and self._buffer.dtype == self._params[0].dtype

    @property
    def _in_place(self) -> bool:
        """FSDP2 shards whose dtype the rows share: the reduce-scatter accumulates straight into the (zeroed) rows.
        Everything else fills the rows from post-accumulate hooks (:meth:`_copy_hook`)."""
        return self._same_dtype and _is_shard(self._params[0])

    def _prepare(self, m: int) -> list[torch.nn.Parameter]:
        """Collect the trainable parameters and (re)allocate the (m, n) buffer and its per-row views if needed."""
        params = trainable_parameters(self._source)
        if not params:
            raise ValueError("model_or_params: no parameter requires grad, so there is nothing to train")
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                "model_or_params: all trainable parameters must share one dtype and device for the flat gradient "
                f"buffer, got dtypes {sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}"
            )
        dtype = self.grad_dtype or params[0].dtype
        signature = (m, tuple((id(p), tuple(p.shape)) for p in params), params[0].dtype, dtype, params[0].device)
        if signature != self._signature:
            _remove_hooks(self._hooks)
            self._buffer, self._row_views, self._row_grads, self._hooks = None, [], [], []  # free the old buffer first
            locals_ = [_local(p) for p in params]
            n = sum(t.numel() for t in locals_)
            buffer = torch.empty((m, n), dtype=dtype, device=params[0].device)
            for i in range(m):
                views, offset = [], 0
                for t in locals_:
                    views.append(buffer[i, offset : offset + t.numel()].view(t.shape))
                    offset += t.numel()
                self._row_views.append(views)
                self._row_grads.append([_like_param(v, p) for v, p in zip(views, params)])
            self._buffer, self._params, self._signature = buffer, params, signature
            if not self._in_place:
                self._hooks = [p.register_post_accumulate_grad_hook(self._copy_hook(k)) for k, p in enumerate(params)]
                # The hooks live on the parameters and see the step only weakly, so a step (and its buffer) that is
                # no longer used is freed with it, not kept alive by the model; its hooks go then too.
                weakref.finalize(self, _remove_hooks, self._hooks)
        return self._params

    def _copy_hook(self, k: int) -> Callable[[torch.Tensor], None]:
        step_ref = weakref.ref(self)

        def hook(param: torch.Tensor) -> None:
            step = step_ref()
            if step is None or step._active_row is None or param.grad is None:  # a backward outside this step
                return
            view = step._row_views[step._active_row][k]
            if step._written[k]:
                view.add_(_local(param.grad))  # a later backward into the same row (micro-batches)
            else:
                view.copy_(_local(param.grad))  # the row is not zeroed beforehand: the first gradient overwrites it
                step._written[k] = True
            param.grad = None  # one parameter's gradient at a time, never a second copy of all of them

        return hook

    def _bind_row(self, params: list[torch.nn.Parameter], i: int) -> None:
        """Make objective i's backward land in row i."""
        self._active_row = i
        self._written = [False] * len(params)
        for p, g in zip(params, self._row_grads[i]):
            p.grad = g if self._in_place else None

    def _finish_row(self, i: int) -> None:
        """Zero the slices of row i that no gradient reached (parameters the objective does not depend on)."""
        if not self._in_place:
            for view, written in zip(self._row_views[i], self._written):
                if not written:
                    view.zero_()

    def _expose_result(self, params: list[torch.nn.Parameter], m: int) -> None:
        """Point every ``.grad`` at the combined row (converted to the weights' dtype when the buffer's differs)."""
        for p, g in zip(params, self._row_grads[m - 1]):
            p.grad = g if self._same_dtype else _like_param(_local(g).to(p.dtype), p)

    def _names(self, m: int) -> list[str]:
        if self.names is None:
            return [str(i) for i in range(m)]
        if len(self.names) != m:
            raise ValueError(f"names: {len(self.names)} names given for {m} objectives")
        return self.names

    def __call__(self, loss_closures: Sequence[LossClosure]) -> StepStats:
        """Run every objective's forward + backward in turn, aggregate, and set ``.grad`` to the combined gradient.

        Each closure computes one objective's scalar loss (the forward pass happens inside it, so its graph is freed
        right after its backward).
        """
        start = time.perf_counter()
        m = len(loss_closures)
        if m == 0:
            raise ValueError("loss_closures: at least one objective is needed")
        names = self._names(m)
        # Gradients that are views of our buffer (left from the previous call) are about to be overwritten.
        old_range = None
        if self._buffer is not None:
            storage = self._buffer.untyped_storage()
            old_range = (storage.data_ptr(), storage.data_ptr() + storage.nbytes())
        params = self._prepare(m)
        buffer = self._buffer
        assert buffer is not None
        saved = [p.grad for p in params]
        try:
            stats = self._run(params, buffer, loss_closures, names)
        except BaseException:
            self._restore(params, saved, old_range)  # an error in an objective leaves the caller's .grad as it was
            raise
        finally:
            self._active_row = None
        if not stats.finite:
            self._restore(params, saved, old_range)
        stats.seconds = time.perf_counter() - start
        return stats

    def _run(
        self,
        params: list[torch.nn.Parameter],
        buffer: torch.Tensor,
        loss_closures: Sequence[LossClosure],
        names: list[str],
    ) -> StepStats:
        m = len(loss_closures)
        if self._in_place:
            buffer.zero_()  # FSDP's reduce-scatter accumulates into the rows; the hooks overwrite them instead
        losses: list[float | None] = [None] * m
        timings: dict[str, float] = {}
        reduction = self.reduction
        sharded = _is_shard(params[0])

        def abandon(index: int | None, what: str) -> StepStats:
            name = names[index] if index is not None else None
            where = f" of objective '{name}'" if name is not None else " from the aggregator"
            return StepStats(
                names=list(names),
                losses=losses,
                finite=False,
                bad_objective=name,
                reason=f"non-finite {what}{where}",
                timings=timings,
            )

        t0 = time.perf_counter()
        waits: list[Callable[[], None]] = []
        loss_values: list[torch.Tensor] = []
        for i, closure in enumerate(loss_closures):
            self._bind_row(params, i)
            loss = _check_loss(closure(), names[i])
            loss_values.append(loss.detach())
            if reduction is None:
                losses[i] = float(loss_values[i])  # one host sync per objective; only single-process runs stop early
                if not math.isfinite(losses[i]):
                    return abandon(i, "loss")
            # With a reduction, a non-finite loss still goes through backward: its NaN gradient reaches every process
            # through the reduction, so all of them skip the step together instead of waiting for each other.
            if sharded:  # FSDP2: autograd reaches the gathered weights, and FSDP reduce-scatters into the shards
                loss.backward()
            else:
                loss.backward(inputs=params)  # inputs=: never accumulate into parameters outside this step
            del loss  # free the graph's outputs before the next objective's forward
            self._finish_row(i)
            if reduction is not None:
                waits.append(reduction.start_row(buffer[i]))  # overlaps with the next objective's compute
        self._active_row = None
        timings["backward"] = time.perf_counter() - t0
        if reduction is not None:
            t0 = time.perf_counter()
            for wait in waits:
                wait()
            mean_losses = torch.stack(loss_values).to(torch.float64)
            reduction.mean_(mean_losses)
            losses[:] = mean_losses.tolist()
            timings["reduce"] = time.perf_counter() - t0
            bad_loss = [i for i in range(m) if not math.isfinite(losses[i])]
            if bad_loss:
                return abandon(bad_loss[0], "loss")

        t0 = time.perf_counter()
        gramian = _gramian(buffer)
        if reduction is not None:
            reduction.sum_gramian_(gramian)  # m × m numbers: the only traffic a sharded step adds
        gramian = gramian.cpu()  # the one device -> host crossing of the step
        timings["gramian"] = time.perf_counter() - t0
        diag = gramian.diagonal().tolist()
        bad = [i for i in range(m) if not math.isfinite(diag[i])]
        if bad:  # a NaN/inf anywhere in g_i makes ‖g_i‖² non-finite, so no separate pass over the buffer
            return abandon(bad[0], "gradient")

        t0 = time.perf_counter()
        coefficients = torch.as_tensor(self.aggregator(gramian.clone())).to(torch.float64).reshape(-1)
        timings["aggregate"] = time.perf_counter() - t0
        if coefficients.numel() != m:
            raise ValueError(f"aggregator returned {coefficients.numel()} coefficients for {m} objectives")
        if not torch.isfinite(coefficients).all():
            return abandon(None, "coefficients")

        t0 = time.perf_counter()
        stats = _statistics(gramian, coefficients)
        scale = 1.0
        if self.max_norm is not None:
            # torch.nn.utils.clip_grad_norm_'s rule, on the norm the Gramian already gives.
            scale = min(1.0, self.max_norm / (stats["direction_norm"] + 1e-6))
        _combine_in_place(buffer, coefficients * scale)
        self._expose_result(params, m)
        timings["combine"] = time.perf_counter() - t0
        return StepStats(names=list(names), losses=losses, timings=timings, clip_scale=scale, **stats)

    @staticmethod
    def _restore(
        params: list[torch.nn.Parameter], saved: list[torch.Tensor | None], old_range: tuple[int, int] | None
    ) -> None:
        for p, g in zip(params, saved):
            if g is not None and old_range is not None and old_range[0] <= _local(g).data_ptr() < old_range[1]:
                g = None  # a view of the (reused) buffer from our previous call: its content is gone
            p.grad = g


def _remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def _is_shard(tensor: torch.Tensor) -> bool:
    """An FSDP2 parameter or gradient: a DTensor whose local part is this process's shard."""
    return callable(getattr(tensor, "to_local", None))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the local shard of an FSDP2 DTensor, the tensor itself otherwise."""
    return tensor.to_local() if _is_shard(tensor) else tensor


def _like_param(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``local`` as a gradient for ``param``: wrapped as a DTensor with the parameter's sharding when it is one."""
    if not _is_shard(param):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def _gramian(buffer: torch.Tensor) -> torch.Tensor:
    """G = B Bᵀ in float64 on the buffer's device: float32 products over column chunks (see ``_GRAMIAN_CHUNK``)
    summed in float64, with no host synchronisation (the caller moves the m × m result once)."""
    m, n = buffer.shape
    gramian = torch.zeros((m, m), dtype=torch.float64, device=buffer.device)
    for start in range(0, n, _GRAMIAN_CHUNK):
        chunk = buffer[:, start : start + _GRAMIAN_CHUNK]
        if chunk.dtype != torch.float32:
            chunk = chunk.float()  # a bfloat16 product would round every partial sum to 3 significant digits
        gramian += (chunk @ chunk.T).to(torch.float64)
    return (gramian + gramian.T) / 2  # exactly symmetric for the solver


def _combine_in_place(buffer: torch.Tensor, coefficients: torch.Tensor) -> None:
    """Row m-1 ← Σ_i c_i row_i, without allocating another n-vector."""
    m = buffer.shape[0]
    last = buffer[m - 1]
    last.mul_(float(coefficients[m - 1]))
    for i in range(m - 1):
        c = float(coefficients[i])
        if c != 0.0:
            last.add_(buffer[i], alpha=c)


def _statistics(gramian: torch.Tensor, coefficients: torch.Tensor) -> dict[str, Any]:
    """Gradient norms, cosines, G c, conflict and ‖d‖, all from the m × m Gramian (no pass over the parameters)."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    outer = norms.outer(norms)
    # A zero gradient has cosine 0 with everything (not NaN).
    cosines = torch.where(outer > 0, gramian / outer.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    cosines.diagonal().copy_((norms > 0).to(torch.float64))
    decrease = gramian @ coefficients
    direction_norm = float((coefficients @ decrease).clamp_min(0).sqrt())
    conflict = bool((decrease < -_CONFLICT_RTOL * norms * direction_norm).any())
    return {
        "grad_norms": norms.tolist(),
        "cosines": cosines.clamp(-1, 1).tolist(),
        "coefficients": coefficients.tolist(),
        "decrease": decrease.tolist(),
        "conflict": conflict,
        "direction_norm": direction_norm,
    }


def summed_backward(
    model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter],
    loss_closures: Sequence[LossClosure],
    weights: Sequence[float] | None = None,
    *,
    names: Sequence[str] | None = None,
) -> StepStats:
    """The way other frameworks do it: one backward of Σ w_i L_i (all graphs alive at once). For comparison.

    Sets ``.grad`` like ``loss.backward()`` does (accumulating into existing gradients); no gradient statistics.
    """
    start = time.perf_counter()
    m = len(loss_closures)
    weights = [1.0] * m if weights is None else list(weights)
    if len(weights) != m:
        raise ValueError(f"weights: {len(weights)} weights given for {m} objectives")
    labels = list(names) if names is not None else [str(i) for i in range(m)]
    params = trainable_parameters(model_or_params)
    losses = [_check_loss(closure(), labels[i]) for i, closure in enumerate(loss_closures)]
    total = sum(w * loss for w, loss in zip(weights, losses))
    values: list[float | None] = [float(loss.detach()) for loss in losses]
    bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
    if bad:
        return StepStats(
            names=labels,
            losses=values,
            finite=False,
            bad_objective=labels[bad[0]],
            reason=f"non-finite loss of objective '{labels[bad[0]]}'",
            seconds=time.perf_counter() - start,
        )
    total.backward(inputs=params)
    return StepStats(
        names=labels, losses=values, coefficients=[float(w) for w in weights], seconds=time.perf_counter() - start
    )


def objective_closures(
    model: torch.nn.Module,
    objectives: Sequence[Callable[..., torch.Tensor]],
    batches: Sequence[Batch],
    reference: Reference | None = None,
) -> list[LossClosure]:
    """Closures ``lambda: objective(model, batch, reference)`` for a step, one per (objective, batch) pair."""
    if len(objectives) != len(batches):
        raise ValueError(f"batches: {len(batches)} batches given for {len(objectives)} objectives")
    device = model_device(model)
    batches = [to_device(b, device) for b in batches]  # a no-op for batches collated on the device
    return [(lambda o=objective, b=batch: o(model, b, reference)) for objective, batch in zip(objectives, batches)]
