"""``upgrad`` (Quinton & Rey 2024, as in torchjd): average of the projections of each g_i onto the dual cone.

The dual cone of the gradients is {x : Jx ≥ 0}. Projecting g_i onto it is, in coefficient form, the QP
v_i = argmin_v vᵀGv s.t. v ≥ e_i; c = mean_i v_i. Every v_i satisfies Gv_i ≥ 0 (KKT), hence so does c.
"""

from __future__ import annotations

import numpy as np

from mollm.aggregators._qp import nonneg_qp, normalise, ridge
from mollm.aggregators.base import Aggregator, register


@register
class UPGrad(Aggregator):
    """Unconflicting projection of gradients (no options)."""

    name = "upgrad"

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        g, trace = normalise(gram)
        if trace == 0.0:
            return np.zeros(m)
        q = ridge(g)
        total = np.zeros(m)
        for i in range(m):
            u = np.zeros(m)
            u[i] = 1.0
            # v = u + x with x ≥ 0: min (u+x)ᵀQ(u+x) = min ½xᵀ(2Q)x + (2Qu)ᵀx + const.
            x = nonneg_qp(2.0 * q, 2.0 * (q @ u))
            total += u + x
        return total / m
