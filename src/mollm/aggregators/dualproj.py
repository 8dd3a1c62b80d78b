"""``dualproj``: the preference-weighted gradient (default: the mean) projected onto the dual cone of the gradients,
as in TorchJD's ``DualProj`` (the projection is Equation 11 of Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory
for Continual Learning", arXiv 1706.08840).

**Source checked.** TorchJD's ``DualProjWeighting`` and ``project_weights`` (github.com/TorchJD/torchjd,
``src/torchjd/aggregation/_dualproj.py`` and ``_utils/dual_cone.py``, commit 46962c2): u = preference weights
(default 1/m), then the weights w of the projection of Jᵀu onto {x : Jx ≥ 0} solve min_w wᵀGw s.t. w ≥ u
(Proposition 1 of Quinton & Rey, arXiv 2406.16232).

**Coefficient form.** c = argmin_v vᵀGv s.t. v ≥ u, i.e. c = u + x with x = argmin_{x ≥ 0} (u+x)ᵀG(u+x), solved
exactly by enumerating active sets (``_qp.nonneg_qp``) on G/trace(G) + 1e-12·I. TorchJD instead uses quadprog with a
1e-4 ridge and zeroes G when its trace is below 1e-4 (an absolute threshold); here only an all-zero G gives c = 0, and
c is invariant to scaling all gradients.

**Never conflicts.** KKT of the QP: (G c)_i ≥ 0 for every i (up to the 1e-12 ridge: (G c)_i ≥ −1e-12·trace(G)·c_i).
``upgrad`` is the same projection applied to each e_i and averaged.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import field_validator

from mollm.aggregators._qp import nonneg_qp, normalise, ridge
from mollm.aggregators.base import Aggregator, AggregatorOptions, register


class DualProjOptions(AggregatorOptions):
    """``preference``: one finite weight per objective for the vector that is projected (None: the mean, 1/m each)."""

    preference: list[float] | None = None

    @field_validator("preference")
    @classmethod
    def _check(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must hold one weight per objective, got an empty list")
        if any(not math.isfinite(x) for x in v):
            raise ValueError(f"preference weights must be finite, got {v}")
        return v


def preference_vector(name: str, preference: list[float] | None, m: int) -> np.ndarray:
    """The preference weights as an array (default 1/m each), checked against the number of objectives."""
    if preference is None:
        return np.full(m, 1.0 / m)
    if len(preference) != m:
        raise ValueError(
            f"aggregator '{name}': option 'preference' has {len(preference)} values but there are {m} objectives"
        )
    return np.asarray(preference, dtype=np.float64)


@register
class DualProj(Aggregator):
    """Projection of the (preference-weighted) mean gradient onto the dual cone."""

    name = "dualproj"
    Options = DualProjOptions

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        u = preference_vector(self.name, self.options.preference, m)
        g, trace = normalise(gram)
        size = float(np.abs(u).sum())
        if trace == 0.0 or size == 0.0:
            return np.zeros(m)
        # The projection is positively homogeneous: solve for u/Σ|u| (the QP's tolerances are absolute), rescale.
        u = u / size
        q = ridge(g)
        # min (u+x)ᵀQ(u+x) over x ≥ 0  ⇔  min ½xᵀ(2Q)x + (2Qu)ᵀx.
        return size * (u + nonneg_qp(2.0 * q, 2.0 * (q @ u)))
