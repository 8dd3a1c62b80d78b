"""The aggregator interface and registry.

An aggregator maps the Gramian G = J Jᵀ of m objective gradients (G_ij = ⟨g_i, g_j⟩) to coefficients c, and the
update direction is d = Jᵀc = Σ_i c_i g_i. Working on the m×m Gramian only keeps the solvers tiny and independent of
the model size. Every aggregator solves in float64 on the CPU and returns c with the input's dtype and device.

State: most aggregators are pure functions of G. A few carry state from one call to the next (``gru``'s moving
averages, ``nash_mtl``'s reused weights, ``pcgrad``'s random generator); they advance it on every call. For exact
checkpoint/resume, :meth:`Aggregator.state_dict` returns that state as JSON-safe values (numbers, lists, None) and
:meth:`Aggregator.load_state_dict` restores it, so that save → load → next call gives the same coefficients as an
uninterrupted run. Stateless aggregators return ``{}`` and accept only ``{}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from mollm.core.registry import Options, Registry, build_options

_SYMMETRY_RTOL = 1e-4


class AggregatorOptions(Options):
    """Base class of an aggregator's options; unknown keys are errors (a typo must not pass silently)."""


class Aggregator(ABC):
    """Maps a Gramian (m×m, symmetric PSD) to m coefficients. Subclasses set ``name``, ``Options``, ``_solve``."""

    name: ClassVar[str]
    Options: ClassVar[type[AggregatorOptions]] = AggregatorOptions

    def __init__(self, **options: Any) -> None:
        self.options = build_options("aggregator", self.name, self.Options, options)

    def __call__(self, gramian: torch.Tensor) -> torch.Tensor:
        """Return the coefficients c (shape (m,), same dtype and device as ``gramian``)."""
        g = _check_gramian(gramian, self.name)
        c = self._solve(g)
        if c.shape != (g.shape[0],) or not np.all(np.isfinite(c)):
            # Never hand a NaN to the optimizer silently.
            raise FloatingPointError(f"aggregator '{self.name}' produced non-finite coefficients {c} for G={g}")
        return torch.as_tensor(c, dtype=torch.float64).to(dtype=gramian.dtype, device=gramian.device)

    @abstractmethod
    def _solve(self, gram: np.ndarray) -> np.ndarray:
        """Coefficients for a checked, symmetric float64 Gramian (m×m numpy array)."""

    def state_dict(self) -> dict[str, Any]:
        """The state carried between calls, as JSON-safe values (``{}``: stateless, the default)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (after a JSON round trip); a stateless aggregator accepts ``{}``."""
        if not isinstance(state, Mapping):
            raise TypeError(f"aggregator '{self.name}': state must be a mapping, got {type(state).__name__}")
        if state:
            raise ValueError(f"aggregator '{self.name}' is stateless; got state keys {sorted(state)}")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"


def check_state(name: str, state: Mapping[str, Any], keys: set[str]) -> Mapping[str, Any]:
    """``state`` if it is a mapping with exactly ``keys`` (a ``ValueError`` naming the missing and unexpected ones)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"aggregator '{name}': state must be a mapping, got {type(state).__name__}")
    missing, extra = keys - set(state), set(state) - keys
    if missing or extra:
        raise ValueError(
            f"aggregator '{name}': state keys do not match (missing: {sorted(missing)}, unexpected: {sorted(extra)})"
        )
    return state


def check_indices(v: Any) -> list[int]:
    """``v`` if it is a non-empty list of distinct non-negative ints (a ``ValueError`` otherwise): objective indices in
    options. Applied before pydantic's coercion, so "1", 1.0 and True are errors rather than index 1."""
    if not isinstance(v, list) or not v:
        raise ValueError(f"must be a non-empty list of objective indices, got {v!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in v):
        raise ValueError(f"objective indices must be non-negative ints, got {v!r}")
    if len(set(v)) != len(v):
        raise ValueError(f"objective indices must be distinct, got {v!r}")
    return v


def _check_gramian(gramian: torch.Tensor, name: str) -> np.ndarray:
    if not isinstance(gramian, torch.Tensor):
        raise TypeError(f"aggregator '{name}': gramian must be a torch.Tensor, got {type(gramian).__name__}")
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] == 0:
        raise ValueError(
            f"aggregator '{name}': gramian must be a non-empty square (m, m) matrix, got {tuple(gramian.shape)}"
        )
    if not gramian.is_floating_point():
        raise ValueError(f"aggregator '{name}': gramian must be a floating-point tensor, got {gramian.dtype}")
    g = gramian.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if not np.all(np.isfinite(g)):
        raise ValueError(f"aggregator '{name}': gramian contains NaN or inf: {g}")
    scale = float(np.abs(g).max())
    if float(np.abs(g - g.T).max()) > _SYMMETRY_RTOL * scale:
        raise ValueError(f"aggregator '{name}': gramian is not symmetric: {g}")
    if float(np.diag(g).min()) < -_SYMMETRY_RTOL * scale:
        raise ValueError(f"aggregator '{name}': gramian has a negative diagonal (squared norms): {np.diag(g)}")
    g = 0.5 * (g + g.T)
    # Rounding can leave a -1e-20 on the diagonal; squared norms are >= 0.
    np.fill_diagonal(g, np.maximum(np.diag(g), 0.0))
    return g


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator")
_A = TypeVar("_A", bound=type[Aggregator])


def register(cls: _A) -> _A:
    """Class decorator: make an aggregator available to :func:`get` under ``cls.name``."""
    return AGGREGATORS.add(cls.name, cls, cls.Options)


def available() -> list[str]:
    """Names of the registered aggregators, sorted."""
    return AGGREGATORS.names()


def seeded_options(name: str, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``options`` with ``seed`` set to the run's ``seed`` when the aggregator draws random numbers (its options have
    a ``seed``) and none is given, so a run is reproduced by its one seed; an explicit ``seed`` (also ``None``) stays.
    An unknown name is left to :func:`get` to report."""
    opts = dict(options)
    try:
        fields = AGGREGATORS.entry(name).options.model_fields
    except ValueError:
        return opts
    if "seed" in fields and "seed" not in opts:
        opts["seed"] = seed
    return opts


def get(name: str, **options: Any) -> Aggregator:
    """Build the aggregator called ``name`` with validated ``options`` (ValueError naming a bad option or name)."""
    return AGGREGATORS.entry(name).target(**options)
