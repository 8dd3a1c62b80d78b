"""``nash_mtl``: Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022, arXiv 2202.01017), from the Gramian only, without cvxpy.

**Source checked.** TorchJD's ``NashMTL`` / ``_NashMTLWeighting`` (github.com/TorchJD/torchjd,
``src/torchjd/aggregation/_nash_mtl.py``, commit 46962c2; adapted there from the authors' code, with the warning that
it "has some flaws"): the Nash bargaining weights α > 0 solve Gα = 1/α elementwise (Algorithm 1 of the paper); TorchJD
normalises G by its Frobenius norm, approximates α by up to 20 convex-concave (CCP) steps with cvxpy/ECOS warm-started
from the previous call's α, recomputes α only every ``update_weights_every`` calls (reusing the stored α otherwise),
and rescales α so that ‖Jᵀα‖ ≤ ``max_norm`` (default 1.0).

**Definition implemented.** With Ĝ = G/‖G‖_F, α is the unique minimiser over α > 0 of the strictly convex

    f(α) = ½ αᵀ(Ĝ + εI)α − Σ_i log α_i,   ε = 1e-8,

whose stationarity condition is (Ĝ + εI)α = 1/α: the Nash condition up to the ridge ε. It is solved to double
precision by Newton's method, started at α_i = (Ĝ + εI)_ii^{-1/2}: far from the optimum the step is kept inside α > 0
and backtracked until f decreases enough (Armijo); once the Newton decrement is below 1/4 full steps converge
quadratically (f is self-concordant). No CCP, no cvxpy. c = α, rescaled to ‖d‖ = sqrt(cᵀGc) ≤ ``max_norm`` when that is set
(default None: no rescaling; without the ridge ‖d‖² = m‖G‖_F). c is invariant to scaling all gradients, and the
solution is unique, so it does not depend on any warm start.

Why the ridge: the exact problem has no solution when some non-negative combination of the gradients vanishes
(Gordan: exactly when no strictly common descent direction exists — opposite gradients, a zero gradient); f is then
unbounded below. With the ridge, α_i ≤ 1/√ε = 1e4 there and d → 0 for exactly Pareto-stationary gradients. Nash-MTL
is invariant to each objective's own scale (g_i → s_i g_i gives α_i → α_i/s_i), so any gradient far above the ridge
gets a full share of d however small it is; one whose norm is below about √ε·sqrt(‖G‖_F) (1e-4 of the overall scale)
fades out smoothly. An exactly zero gradient gets c_i = 0.

State (``update_weights_every`` k > 1): α is recomputed on calls 0, k, 2k, ... and reused in between (rescaled to
``max_norm`` with the current G, as TorchJD); ``state_dict()`` holds the number of calls and the last computed α.

**Never conflicts (with k = 1).** At the solution (Ĝα)_i = 1/α_i − εα_i, so (G c)_i ≥ −ε‖G‖_F c_i for every i (the
ridge), and > 0 whenever α_i < 1e4 — i.e. unless the gradients are (numerically) Pareto-stationary. Rescaling to
``max_norm`` keeps the signs. With k > 1 a reused α can conflict with the new gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field

from mollm.aggregators.base import Aggregator, AggregatorOptions, check_state, register

_RIDGE = 1e-8  # relative to ‖G‖_F
_MAX_NEWTON = 200
_NEWTON_TOL = 1e-24  # squared Newton decrement at which α counts as converged
_STATE_KEYS = {"calls", "alpha"}


class NashMTLOptions(AggregatorOptions):
    """``max_norm``: rescale so that ‖d‖ ≤ max_norm (None: never; TorchJD's default is 1.0);
    ``update_weights_every``: recompute α every k calls and reuse it in between."""

    max_norm: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    update_weights_every: int = Field(default=1, ge=1, strict=True)


def nash_weights(gram: np.ndarray, ridge: float = _RIDGE) -> np.ndarray:
    """α > 0 with (Ĝ + ridge·I)α = 1/α, Ĝ = G/‖G‖_F, on the objectives with a non-zero gradient (0 elsewhere)."""
    m = gram.shape[0]
    alpha = np.zeros(m)
    active = np.nonzero(np.diag(gram) > 0.0)[0]
    if active.size == 0:
        return alpha
    g = gram[np.ix_(active, active)]
    q = g / np.linalg.norm(g) + ridge * np.eye(active.size)

    def potential(x: np.ndarray) -> float:
        return 0.5 * float(x @ q @ x) - float(np.log(x).sum())

    x = 1.0 / np.sqrt(np.diag(q))  # the solution when the gradients are orthogonal
    value = potential(x)
    previous = math.inf
    for _ in range(_MAX_NEWTON):
        grad = q @ x - 1.0 / x
        step = np.linalg.solve(q + np.diag(1.0 / (x * x)), grad)
        decrement_sq = float(grad @ step)  # ≈ 2 (f(x) − min f) near the optimum
        if not decrement_sq > _NEWTON_TOL:
            break
        if decrement_sq < 0.0625:
            # Quadratic-convergence region of a self-concordant f (Newton decrement < 1/4): the full step stays inside
            # α > 0. Stop once rounding keeps the decrement from shrinking (it squares while converging).
            if decrement_sq > 0.5 * previous:
                break
            x, previous = x - step, decrement_sq
            continue
        # Far from the optimum: the Newton step, shortened to stay inside α > 0 and backtracked until f decreases
        # enough (Armijo); f's rounding is far below these decreases.
        t = 1.0
        towards_zero = step > 0.0
        if towards_zero.any():
            t = min(1.0, 0.99 * float((x[towards_zero] / step[towards_zero]).min()))
        while t > 1e-12:
            new = x - t * step
            new_value = potential(new)
            if new_value <= value - 0.25 * t * decrement_sq:
                break
            t *= 0.5
        else:
            break
        x, value = new, new_value
    alpha[active] = x
    return alpha


@register
class NashMTL(Aggregator):
    """Nash-MTL: the Nash bargaining weights Gα = 1/α, by Newton's method on a convex potential."""

    name = "nash_mtl"
    Options = NashMTLOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._calls = 0
        self._alpha: np.ndarray | None = None

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        if self._alpha is not None and self._alpha.shape != (m,):
            raise ValueError(f"aggregator 'nash_mtl': stored weights are for {self._alpha.size} objectives, got {m}")
        if self._calls % self.options.update_weights_every == 0 or self._alpha is None:
            self._alpha = nash_weights(gram)
        self._calls += 1
        c = self._alpha.copy()
        if self.options.max_norm is not None:
            norm = math.sqrt(max(float(c @ gram @ c), 0.0))
            if norm > self.options.max_norm:
                c *= self.options.max_norm / norm
        return c

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self._calls, "alpha": None if self._alpha is None else self._alpha.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = check_state(self.name, state, _STATE_KEYS)
        calls, alpha = state["calls"], state["alpha"]
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise ValueError(f"aggregator 'nash_mtl': state 'calls' must be a non-negative int, got {calls!r}")
        if alpha is not None:
            ok = (
                isinstance(alpha, list)
                and alpha
                and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    for v in alpha
                )
            )
            if not ok:
                raise ValueError(
                    f"aggregator 'nash_mtl': state 'alpha' must be a list of finite numbers >= 0, got {alpha!r}"
                )
            alpha = np.asarray(alpha, dtype=np.float64)
        self._calls, self._alpha = calls, alpha
