"""``linear``: fixed weights (weighted sum, a.k.a. scalarisation). Not conflict-averse; d = Σ_i w_i g_i."""

from __future__ import annotations

import math

import numpy as np
from pydantic import field_validator

from mollm.aggregators.base import Aggregator, AggregatorOptions, register


class LinearOptions(AggregatorOptions):
    """``weights``: one non-negative finite weight per objective; ``None`` means all ones (the summed loss)."""

    weights: list[float] | None = None

    @field_validator("weights")
    @classmethod
    def _check(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must hold one weight per objective, got an empty list")
        if any(not math.isfinite(x) or x < 0 for x in v):
            raise ValueError(f"weights must be finite and >= 0, got {v}")
        if not any(x > 0 for x in v):
            raise ValueError(f"at least one weight must be > 0, got {v}")
        return v


@register
class Linear(Aggregator):
    """c = w regardless of G (the direction scales with the gradients)."""

    name = "linear"
    Options = LinearOptions

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        w = self.options.weights
        if w is None:
            return np.ones(m)
        if len(w) != m:
            raise ValueError(f"aggregator 'linear': option 'weights' has {len(w)} values but there are {m} objectives")
        return np.asarray(w, dtype=np.float64)
