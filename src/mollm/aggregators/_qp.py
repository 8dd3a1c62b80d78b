"""Small quadratic programs on m×m Gramians, solved exactly in float64 (private).

m is the number of objectives (2..5 in practice), so for m ≤ ``_ENUM_MAX`` the solvers enumerate every active set
(support) and keep the best feasible candidate: with a positive-definite (ridged) matrix the optimum is the
equality-constrained minimiser on its own support, so the minimum over feasible candidates is exact. Larger m falls
back to accelerated projected gradient. No third-party QP solver is used.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

_ENUM_MAX = 8
_RIDGE = 1e-12  # relative to trace(G) = 1 after normalisation; makes every sub-matrix invertible
_FEAS_TOL = 1e-10
_PG_ITERS = 20000


@lru_cache(maxsize=None)
def _supports(m: int) -> tuple[np.ndarray, ...]:
    """For k = 1..m, an array (C(m, k), k) of all supports of size k (batched solves per size)."""
    return tuple(np.array(list(itertools.combinations(range(m), k)), dtype=np.intp) for k in range(1, m + 1))


def _sub_systems(q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return q[idx[:, :, None], idx[:, None, :]]


def normalise(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """Return (G / trace(G), trace(G)); trace 0 (all-zero G) gives (zeros, 0.0)."""
    trace = float(np.trace(gram))
    if not trace > 0.0:
        return np.zeros_like(gram), 0.0
    return gram / trace, trace


def ridge(gram: np.ndarray) -> np.ndarray:
    """Add the tiny ridge used by every solver (G is expected to be trace-normalised)."""
    return gram + _RIDGE * np.eye(gram.shape[0])


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, Held et al.)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / idx > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def simplex_qp(q: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """argmin_{w in simplex} ½ wᵀQw + bᵀw for a positive-definite Q (m×m, float64)."""
    m = q.shape[0]
    b = np.zeros(m) if b is None else b
    if m == 1:
        return np.ones(1)
    if m > _ENUM_MAX:
        return _simplex_pg(q, b)
    best, best_val = None, np.inf
    for idx in _supports(m):
        rhs = np.stack([-b[idx], np.ones(idx.shape)], axis=2)  # (n_supports, k, 2)
        try:
            sol = np.linalg.solve(_sub_systems(q, idx), rhs)
        except np.linalg.LinAlgError:
            continue  # a singular sub-matrix cannot occur for positive-definite Q; be safe anyway
        # w = -Q⁻¹b - ν Q⁻¹1 with ν fixed by 1ᵀw = 1.
        qinv_b, qinv_1 = sol[..., 0], sol[..., 1]
        denom = qinv_1.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ws = qinv_b + ((1.0 - qinv_b.sum(axis=1)) / denom)[:, None] * qinv_1
        ok = (denom > 0.0) & np.all(np.isfinite(ws), axis=1) & (ws.min(axis=1) >= -_FEAS_TOL)
        if not ok.any():
            continue
        rows = np.nonzero(ok)[0]
        w = np.zeros((rows.size, m))
        np.put_along_axis(w, idx[rows], np.maximum(ws[rows], 0.0), axis=1)
        w /= w.sum(axis=1, keepdims=True)
        vals = 0.5 * np.einsum("ri,ij,rj->r", w, q, w) + w @ b
        i = int(np.argmin(vals))
        if vals[i] < best_val:
            best, best_val = w[i], float(vals[i])
    return best if best is not None else _simplex_pg(q, b)


def nonneg_qp(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_{x >= 0} ½ xᵀQx + bᵀx for a positive-definite Q (m×m, float64)."""
    m = q.shape[0]
    if m > _ENUM_MAX:
        return _nonneg_pg(q, b)
    best, best_val = np.zeros(m), 0.0  # the empty support, x = 0
    for idx in _supports(m):
        try:
            xs = np.linalg.solve(_sub_systems(q, idx), -b[idx][..., None])[..., 0]
        except np.linalg.LinAlgError:
            continue
        scale = np.maximum(1.0, np.abs(xs).max(axis=1))
        ok = np.all(np.isfinite(xs), axis=1) & (xs.min(axis=1) >= -_FEAS_TOL * scale)
        if not ok.any():
            continue
        rows = np.nonzero(ok)[0]
        x = np.zeros((rows.size, m))
        np.put_along_axis(x, idx[rows], np.maximum(xs[rows], 0.0), axis=1)
        vals = 0.5 * np.einsum("ri,ij,rj->r", x, q, x) + x @ b
        i = int(np.argmin(vals))
        if vals[i] < best_val:
            best, best_val = x[i], float(vals[i])
    return best


def _lipschitz(q: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(q)[-1])


def _simplex_pg(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Accelerated projected gradient (FISTA) on the simplex; the fallback for large m."""
    m = q.shape[0]
    step = 1.0 / _lipschitz(q)
    w = np.full(m, 1.0 / m)
    y, t = w.copy(), 1.0
    for _ in range(_PG_ITERS):
        w_new = project_simplex(y - step * (q @ y + b))
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = w_new + (t - 1.0) / t_new * (w_new - w)
        if np.abs(w_new - w).max() < 1e-15:
            return w_new
        w, t = w_new, t_new
    return w


def _nonneg_pg(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Accelerated projected gradient on the non-negative orthant; the fallback for large m."""
    m = q.shape[0]
    step = 1.0 / _lipschitz(q)
    x = np.zeros(m)
    y, t = x.copy(), 1.0
    for _ in range(_PG_ITERS):
        x_new = np.maximum(y - step * (q @ y + b), 0.0)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = x_new + (t - 1.0) / t_new * (x_new - x)
        if np.abs(x_new - x).max() < 1e-15 * max(1.0, float(np.abs(x_new).max())):
            return x_new
        x, t = x_new, t_new
    return x


def min_norm_simplex(gram: np.ndarray) -> np.ndarray:
    """MGDA: argmin_{c in simplex} cᵀGc (the min-norm point of the gradients' convex hull); zeros for G = 0."""
    m = gram.shape[0]
    g, trace = normalise(gram)
    if trace == 0.0:
        return np.zeros(m)
    if m == 2:
        # Closed form: the foot of the perpendicular from 0 onto the segment [g2, g1], clipped to it.
        den = g[0, 0] + g[1, 1] - 2.0 * g[0, 1]
        gamma = 0.5 if not den > 0.0 else float(np.clip((g[1, 1] - g[0, 1]) / den, 0.0, 1.0))
        return np.array([gamma, 1.0 - gamma])
    return simplex_qp(2.0 * ridge(g))
