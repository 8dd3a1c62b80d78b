"""``ds_mgda``: MOLLM's dual-space MGDA — a common descent direction built from the edges of the dual cone.

**This derivation is the project's own reading of the MOLLM paper** (its full text was not available); see
``shared/notes/aggregators.md``. The cone of common descent directions {d : Jd ≥ 0}, restricted to span(g_1..g_m),
has edges e_j = JᵀG⁺u_j: when G has full rank, J e_j = u_j, so e_j descends on objective j and is orthogonal to every
other gradient, and ‖e_j‖² = (G⁺)_jj. The direction d = Σ_j α_j e_j/‖e_j‖ (α_j > 0, a preference; default 1)
lies strictly inside the cone: ⟨g_i, d⟩ = α_i / sqrt((G⁺)_ii) > 0 for every i. In coefficient form

    c = G⁺a,   a_j = α_j / sqrt((G⁺)_jj),

and d is rescaled to a reference length (option ``norm``; default the mean gradient norm), since the edge sum's
length is arbitrary.

**Guarantee.** Call an objective *active* when its gradient norm is above ``vanish_tol`` × the largest norm, and
*floored* when it is active but below the largest norm / ``max_ratio``. Then ⟨g_i, d⟩ = (G c)_i ≥ 0 for every active
objective, and > 0 for every one of them when the active gradients are linearly independent and none is floored.
Objectives below ``vanish_tol`` get coefficient 0 and no guarantee (their first-order change is negligible).

What the preference α means (the definition, tested in ``tests/test_aggregators.py``): at full rank with no
objective floored, (G c)_i = s · α_i / sqrt((G⁺)_ii) with one s > 0 for all i, so multiplying α_f by k multiplies
objective f's first-order decrease *relative to every other objective's* by exactly k, and its share of the total
decrease rises. That is the whole promise: the step length is then rescaled (``norm``), and at a fixed length the
*absolute* decrease of f need not rise — for aligned gradients (acute angle) the edges are obtuse and more α_f tilts
d towards an edge nearly orthogonal to g_f (two unit gradients 0.3 rad apart: f's decrease 0.99 at α = (1, 1), 0.39 at
(4, 1)). Where a preference must be monotone at a fixed step length, ``dualproj`` with ``preference`` is (its
direction maximises ⟨Σ w_i g_i, d⟩ over unit d in the dual cone). On PKU-SafeRLHF with MOLLM's three objectives,
where the forget gradient conflicts with the others, α_forget 0.25 → 4 moved the forget-answer NLL (3.10 → 4.59),
the KL cost (0.095 → 0.205) and forget's absolute first-order decrease monotonically (``bench/alpha_sweep.py``).

Numerics and guards (the dual solve blows up where G is singular, which happens in practice):

* ``vanish_tol``: an objective whose gradient norm is below ``vanish_tol`` × the largest norm is left out of the dual
  solve and gets coefficient 0 — at step 0 the KL-to-reference gradient is exactly zero, and a saturated loss (UCE
  near 0) has a vanishing, noisy gradient whose dual coefficient would otherwise grow without bound.
* the pseudo-inverse is taken by eigen-decomposition of the cosine matrix D⁻¹GD⁻¹ (D = diag of gradient norms) with
  relative tolerance ``rcond``, so rank is decided by collinearity, not by the gradients' scales; G⁺ ≈ D⁻¹C⁺D⁻¹.
* ``max_ratio``: even above ``vanish_tol``, a small gradient g_j forces every other edge to cancel its component
  along g_j, with coefficients growing like 1/‖g_j‖ (a prototype saw 13 → 12,700 as UCE saturated). In the dual
  solve each norm is therefore floored at max_k ‖g_k‖ / max_ratio by giving g_j a fictitious extra component,
  orthogonal to everything, of length sqrt(floor² − ‖g_j‖²) (G_eff = G + diag(s²)). This bounds the coefficients at
  about ``max_ratio`` times the largest gradient's, keeps ⟨g_i, d⟩ = a_i > 0 exactly in the dual direction for
  every objective that is not floored, and lets a floored objective's influence fade smoothly as its gradient
  vanishes (a floored objective that would get worse is handled below). ``None`` disables the floor.
* if the dual direction is not a strictly common descent direction for the objectives that are not floored
  (rank-deficient G whose range misses the positive orthant, e.g. exactly opposite gradients), fall back to the
  ``mgda`` min-norm direction on the active set (still Gc ≥ 0), returned at its own length (it shrinks to 0 at
  Pareto-stationary points, where enlarging it would amplify noise).
* the fictitious component is dropped when d is formed, so a floored objective's real change is
  ⟨g_j, d⟩ = a_j − s_j² c_j, which can be negative (5 collinear gradients, one 230× smaller than the largest and
  opposite to the rest, gave cosine −1). When some floored objective would get worse, c moves to the nearest point,
  in the metric of G_eff (the length of the lifted direction), at which no active objective gets worse:
  min (c − c_dual)ᵀ G_eff (c − c_dual) s.t. (G c)_i ≥ 0 for every active i, solved exactly by enumerating which
  constraints bind (for more than 8 objectives: the ``mgda`` direction on the active set instead). c = 0 is feasible, so the move is
  at most the lifted length of the dual direction itself and c stays bounded; it grows continuously from 0 as the
  conflict appears. (G c)_i changes by Σ_j λ_j ⟨g_j, g_i⟩ / ‖g_j‖ over the binding constraints j (multipliers
  λ_j ≥ 0; exact when G_eff has full rank), so an objective that is not floored keeps improving unless a binding
  gradient conflicts with it, and is at worst left at 0. The price is step length where the guarantee bites: with
  coefficients bounded by K, a step that spares a conflicting g_j can be long only if other gradients can cancel
  g_j's share (for m = 2, ‖d‖ ≲ K‖g_j‖ / |cos(g_1, g_j)|).
* an all-zero G gives c = 0.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from mollm.aggregators._qp import min_norm_simplex
from mollm.aggregators.base import Aggregator, AggregatorOptions, register

_DESCENT_COS = 1e-8  # min cos(g_i, d) for the dual direction to count as strictly common descent
_ENUM_MAX = 8  # most objectives for which the projection that spares floored objectives is enumerated
_QP_RCOND = 1e-12  # relative cut-off of the pseudo-inverses in that projection
_FEAS_RTOL = 1e-12  # a projected (G c)_i counts as ≥ 0 above -_FEAS_RTOL ‖g_i‖ Σ_k |c_k| ‖g_k‖ (rounding)


class DSMGDAOptions(AggregatorOptions):
    """Options of :class:`DSMGDA` (see the module docstring)."""

    preference: list[float] | None = None
    norm: Literal["mean", "max", "none"] = "mean"
    vanish_tol: float = Field(default=1e-4, ge=0.0, lt=1.0, allow_inf_nan=False)
    max_ratio: float | None = Field(default=100.0, ge=1.0, allow_inf_nan=False)
    rcond: float = Field(default=1e-6, gt=0.0, lt=1.0, allow_inf_nan=False)

    @field_validator("preference")
    @classmethod
    def _check_preference(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must hold one positive weight per objective, got an empty list")
        if any(not math.isfinite(x) or x <= 0 for x in v):
            raise ValueError(f"preference weights must be finite and > 0, got {v}")
        return v


@register
class DSMGDA(Aggregator):
    """Dual-space MGDA (the project's reading of MOLLM): unit edges of the dual cone, summed with weights α."""

    name = "ds_mgda"
    Options = DSMGDAOptions

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        opts = self.options
        m = gram.shape[0]
        if opts.preference is not None and len(opts.preference) != m:
            raise ValueError(
                f"aggregator 'ds_mgda': option 'preference' has {len(opts.preference)} values but there are {m} objectives"
            )
        alpha_all = np.ones(m) if opts.preference is None else np.asarray(opts.preference, dtype=np.float64)
        trace = float(np.trace(gram))
        if not trace > 0.0:
            return np.zeros(m)
        g = gram / trace
        norms = np.sqrt(np.diag(g))
        active = np.nonzero(norms > opts.vanish_tol * norms.max())[0]
        ga, na, alpha = g[np.ix_(active, active)], norms[active], alpha_all[active]

        floored = np.zeros(active.size, dtype=bool)
        if opts.max_ratio is not None:
            floor = na.max() / opts.max_ratio
            floored = na < floor
            # Fictitious orthogonal components lift small norms to the floor (see the module docstring).
            ga_eff = ga + np.diag(np.where(floored, floor**2 - na**2, 0.0))
        else:
            ga_eff = ga
        ne = np.sqrt(np.diag(ga_eff))

        # Pseudo-inverse of the cosine matrix; rank decided by collinearity only.
        cos = ga_eff / np.outer(ne, ne)
        evals, evecs = np.linalg.eigh(0.5 * (cos + cos.T))
        keep = evals > opts.rcond * evals[-1]
        cos_pinv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
        g_pinv = cos_pinv / np.outer(ne, ne)
        r = 1.0 / np.sqrt(np.diag(g_pinv))  # (G⁺)_jj > 0: cos has a unit diagonal
        ca = g_pinv @ (alpha * r)

        d_norm = math.sqrt(max(float(ca @ ga @ ca), 0.0))
        descent = ga @ ca
        c = np.zeros(m)
        strict = ~floored
        if not d_norm > 0.0 or float((descent[strict] / (na[strict] * d_norm)).min()) <= _DESCENT_COS:
            c[active] = min_norm_simplex(ga)
            return c
        if opts.norm == "none":
            scale = 1.0 / math.sqrt(trace)  # undo the trace normalisation: raw c = G⁺a has units 1/‖g‖
        else:
            ref = float(norms.mean()) if opts.norm == "mean" else float(norms.max())
            scale = ref / d_norm
        c[active] = _spare_floored(ga, g_pinv, ca * scale, floored)
        return c


def _spare_floored(ga: np.ndarray, h_pinv: np.ndarray, cd: np.ndarray, floored: np.ndarray) -> np.ndarray:
    """``cd`` if no floored objective gets worse, else the nearest point to it, in the metric of H = G_eff, at which
    no active objective gets worse (see the module docstring).

    ``ga`` is the active, trace-normalised G and ``h_pinv`` the pseudo-inverse of the floored G_eff. The QP
    min ½ (c - cd)ᵀH(c - cd) s.t. ⟨ĝ_i, d⟩ ≥ 0 is solved by enumerating which constraints bind: for each set S,
    c_S = cd + H⁺R_Sᵀλ_S is the nearest point with ⟨ĝ_i, d⟩ = 0 on S, and the nearest feasible c_S is the optimum.
    q = R H⁺Rᵀ is singular whenever the active gradients are linearly dependent: a pseudo-inverse per S stays
    exact there, where a ridged solve left violations up to cos −1e-4. c = 0 (S = all) is feasible, so the move is
    at most ‖cd‖_H and c stays bounded.
    """
    if not (floored & (ga @ cd < 0.0)).any():
        return cd
    m = ga.shape[0]
    if m > _ENUM_MAX:
        return min_norm_simplex(ga)  # 2^m binding sets: not worth it where ds_mgda is used (m = 2..5)
    norms = np.sqrt(np.diag(ga))
    rows = ga / norms[:, None]  # unit-gradient rows: (rows @ c)_i = ⟨ĝ_i, d⟩, every constraint on the same scale
    hr = h_pinv @ rows.T
    q, b = rows @ hr, rows @ cd
    best, best_dist = None, math.inf
    for k in range(1, m + 1):
        for sub in itertools.combinations(range(m), k):
            s = list(sub)
            lam = -np.linalg.pinv(q[np.ix_(s, s)], rcond=_QP_RCOND, hermitian=True) @ b[s]
            c = cd + hr[:, s] @ lam
            dist = float(lam @ q[np.ix_(s, s)] @ lam)  # = ‖c - cd‖²_H
            # Feasible up to the rounding of (G c)_i = Σ_k G_ik c_k.
            if dist < best_dist and (ga @ c >= -_FEAS_RTOL * norms * float(np.abs(c) @ norms)).all():
                best, best_dist = c, dist
    return best if best is not None else min_norm_simplex(ga)
