"""``cagrad`` (Liu et al. 2021, "Conflict-Averse Gradient Descent"), from the Gramian only.

With ḡ the mean gradient and φ = c²‖ḡ‖², w = argmin_{w in simplex} g_wᵀḡ + √φ ‖g_w‖ (g_w = Jᵀw), and
d = ḡ + (√φ / ‖g_w‖) g_w, i.e. coefficients 1/m + (√φ/‖g_w‖) w. The inner problem is solved in float64 through
√φ‖x‖ = min_{t>0} (√φ/2)(‖x‖²/t + t): for fixed t it is a QP on the simplex (solved exactly by enumeration) and the
optimal value is unimodal in log t (golden-section search). The paper's optional rescaling of d is not applied.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from mollm.aggregators._qp import normalise, ridge, simplex_qp
from mollm.aggregators.base import Aggregator, AggregatorOptions, register

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_ITERS = 64


class CAGradOptions(AggregatorOptions):
    """``c``: radius of the ball around ḡ, as a fraction of ‖ḡ‖, in [0, 1) (0 gives the plain mean)."""

    c: float = Field(default=0.4, ge=0.0, lt=1.0, allow_inf_nan=False)


def cagrad_inner(q: np.ndarray, k: float) -> np.ndarray:
    """argmin_{w in simplex} wᵀQb̄ + k·sqrt(wᵀQw) (b̄ = 1/m) for a positive-definite Q and k > 0."""
    m = q.shape[0]
    lin = q @ np.full(m, 1.0 / m)

    def inner(log_t: float) -> tuple[float, np.ndarray]:
        t = math.exp(log_t)
        w = simplex_qp((k / t) * q, lin)
        return float(lin @ w + 0.5 * k * (w @ q @ w) / t + 0.5 * k * t), w

    # ‖g_w‖ lies between sqrt(λ_min) and sqrt(λ_max) of Q; bracket generously around that.
    eig = np.linalg.eigvalsh(q)
    lo, hi = 0.5 * math.log(max(eig[0], 1e-300)) - 1.0, 0.5 * math.log(eig[-1]) + 1.0
    a, b = lo, hi
    x1, x2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    (f1, w1), (f2, w2) = inner(x1), inner(x2)
    for _ in range(_ITERS):
        if f1 <= f2:
            b, x2, f2, w2 = x2, x1, f1, w1
            x1 = b - _GOLDEN * (b - a)
            f1, w1 = inner(x1)
        else:
            a, x1, f1, w1 = x1, x2, f2, w2
            x2 = a + _GOLDEN * (b - a)
            f2, w2 = inner(x2)
    return w1 if f1 <= f2 else w2


@register
class CAGrad(Aggregator):
    """Conflict-averse gradient descent."""

    name = "cagrad"
    Options = CAGradOptions

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        g, trace = normalise(gram)
        if trace == 0.0:
            return np.zeros(m)
        mean = np.full(m, 1.0 / m)
        k = self.options.c * math.sqrt(max(float(mean @ g @ mean), 0.0))
        if not k > 1e-12:  # c = 0 or ḡ = 0: the ball is a point, d = ḡ
            return mean
        q = ridge(g)
        w = cagrad_inner(q, k)
        rho = math.sqrt(float(w @ q @ w))
        return mean + (k / rho) * w
