"""The multi-objective step: per-objective gradients, their Gramian, aggregated coefficients, the combined gradient.

How it stays as cheap as one backward pass of the summed loss (numbers in ``shared/notes/setting.md``):

* Each objective's forward + backward runs one after the other, so only one autograd graph is alive at a time.
* All per-objective gradients live in ONE preallocated flat buffer of shape (m, n) (n = number of trainable
  scalars). Before objective i's backward, every trainable parameter's ``.grad`` is pointed at a view of row i;
  autograd then accumulates in place into that row (``grad += new``), so there is no ``torch.cat`` of flattened
  gradients and no unflattening afterwards.
* The Gramian G = B Bᵀ is a few small matrix products over column chunks, summed in float64 (a single float32
  product over 10⁸ columns loses ~3 % of relative accuracy), and the aggregator solves on the m × m matrix.
* The combined gradient d = Σ c_i g_i is formed in place in the last row, which the parameters' ``.grad`` already
  point at, so any torch optimizer can step on it. Extra memory over a plain backward: (m − 1) × trainable bytes.

The buffer is reused across steps and reallocated only when the set of trainable parameters changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

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
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; non-finite numbers become ``None`` (strict JSON has no NaN)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


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
            freezing or unfreezing is picked up) or an explicit list of parameters.
        aggregator: maps the (m, m) float64 Gramian to m coefficients, e.g. ``mollm.aggregators.get("mgda")``.
        names: one label per objective, used in the statistics; defaults to "0", "1", ...
        reduce: in a data-parallel run, a function that averages a tensor in place across processes (e.g. an
            all-reduce through ``accelerate``'s process group). It is applied to the (m, n) gradient buffer and the
            losses before the Gramian is formed, so every process computes the same coefficients and update.
    """

    def __init__(
        self,
        model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter],
        aggregator: Aggregator,
        *,
        names: Sequence[str] | None = None,
        reduce: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        if not callable(aggregator):
            raise TypeError(f"aggregator: expected a callable Gramian -> coefficients, got {type(aggregator).__name__}")
        self._source: torch.nn.Module | list[torch.nn.Parameter] = (
            model_or_params if isinstance(model_or_params, torch.nn.Module) else list(model_or_params)
        )
        self.aggregator = aggregator
        self.names = list(names) if names is not None else None
        self.reduce = reduce
        self._params: list[torch.nn.Parameter] = []
        self._signature: tuple[Any, ...] | None = None
        self._buffer: torch.Tensor | None = None
        self._row_views: list[list[torch.Tensor]] = []

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the gradient buffer (m × trainable bytes; 0 before the first call)."""
        return 0 if self._buffer is None else self._buffer.numel() * self._buffer.element_size()

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
        signature = (m, tuple((id(p), tuple(p.shape)) for p in params), params[0].dtype, params[0].device)
        if signature != self._signature:
            n = sum(p.numel() for p in params)
            self._buffer = None  # free the old buffer before allocating the new one
            self._row_views = []
            buffer = torch.empty((m, n), dtype=params[0].dtype, device=params[0].device)
            for i in range(m):
                views, offset = [], 0
                for p in params:
                    views.append(buffer[i, offset : offset + p.numel()].view(p.shape))
                    offset += p.numel()
                self._row_views.append(views)
            self._buffer = buffer
            self._params = params
            self._signature = signature
        return self._params

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
        buffer.zero_()
        losses: list[float | None] = [None] * m
        timings: dict[str, float] = {}

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
        for i, closure in enumerate(loss_closures):
            for p, view in zip(params, self._row_views[i]):
                p.grad = view
            loss = _check_loss(closure(), names[i])
            losses[i] = float(loss.detach())
            if not math.isfinite(losses[i]) and self.reduce is None:
                return abandon(i, "loss")
            # With `reduce`, a non-finite loss still goes through backward: its NaN gradient reaches every process
            # through the reduction, so all of them skip the step together instead of waiting for each other.
            loss.backward(inputs=params)  # inputs=: never accumulate into parameters outside this step
            del loss  # free the graph's outputs before the next objective's forward
        timings["backward"] = time.perf_counter() - t0
        if self.reduce is not None:
            t0 = time.perf_counter()
            self.reduce(buffer)
            mean_losses = torch.tensor(losses, dtype=torch.float64, device=buffer.device)
            self.reduce(mean_losses)
            losses[:] = mean_losses.tolist()
            timings["reduce"] = time.perf_counter() - t0
            bad_loss = [i for i in range(m) if not math.isfinite(losses[i])]
            if bad_loss:
                return abandon(bad_loss[0], "loss")

        t0 = time.perf_counter()
        gramian = _gramian(buffer)
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
        _combine_in_place(buffer, coefficients)
        for p, view in zip(params, self._row_views[m - 1]):  # usually already there; cheap to make sure
            p.grad = view
        timings["combine"] = time.perf_counter() - t0
        return StepStats(names=list(names), losses=losses, timings=timings, **_statistics(gramian, coefficients))

    @staticmethod
    def _restore(
        params: list[torch.nn.Parameter], saved: list[torch.Tensor | None], old_range: tuple[int, int] | None
    ) -> None:
        for p, g in zip(params, saved):
            if g is not None and old_range is not None and old_range[0] <= g.data_ptr() < old_range[1]:
                g = None  # a view of the (reused) buffer from our previous call: its content is gone
            p.grad = g


def _gramian(buffer: torch.Tensor) -> torch.Tensor:
    """G = B Bᵀ in float64: float32 products over column chunks, summed in float64 (see ``_GRAMIAN_CHUNK``)."""
    m, n = buffer.shape
    gramian = torch.zeros((m, m), dtype=torch.float64)
    for start in range(0, n, _GRAMIAN_CHUNK):
        chunk = buffer[:, start : start + _GRAMIAN_CHUNK]
        gramian += (chunk @ chunk.T).to(device="cpu", dtype=torch.float64)
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


def multi_objective_backward(
    model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter],
    loss_closures: Sequence[LossClosure],
    aggregator: Aggregator,
    *,
    names: Sequence[str] | None = None,
) -> StepStats:
    """One-shot form of :class:`MultiObjectiveStep` (allocates its buffer every call; keep a step object in loops)."""
    return MultiObjectiveStep(model_or_params, aggregator, names=names)(loss_closures)


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
    return [(lambda o=objective, b=batch: o(model, b, reference)) for objective, batch in zip(objectives, batches)]
