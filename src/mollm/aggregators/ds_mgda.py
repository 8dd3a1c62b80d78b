"""``ds_mgda``: MOLLM's dual-space MGDA — a strictly common descent direction built from the edges of the dual cone.

**This derivation is the project's own reading of the MOLLM paper** (its full text was not available); see
``shared/notes/aggregators.md``. The cone of common descent directions {d : Jd ≥ 0}, restricted to span(g_1..g_m),
has edges e_j = JᵀG⁺u_j: when G has full rank, J e_j = u_j, so e_j descends on objective j and is orthogonal to every
other gradient, and ‖e_j‖² = (G⁺)_jj. The direction d = Σ_j α_j e_j/‖e_j‖ (α_j > 0, a preference; default 1)
lies strictly inside the cone: ⟨g_i, d⟩ = α_i / sqrt((G⁺)_ii) > 0 for every i. In coefficient form

    c = G⁺a,   a_j = α_j / sqrt((G⁺)_jj),

and d is rescaled to a reference length (option ``norm``; default the mean gradient norm), since the edge sum's
length is arbitrary.

Numerics and guards (the dual solve blows up where G is singular, which happens in practice):

* ``vanish_tol``: an objective whose gradient norm is below ``vanish_tol`` × the largest norm is left out of the dual
  solve and gets coefficient 0 — at step 0 the KL-to-reference gradient is exactly zero, and a saturated loss (UCE
  near 0) has a vanishing, noisy gradient whose dual coefficient would otherwise grow without bound. Non-conflict is
  then guaranteed for the remaining objectives only (the excluded ones change by a negligible first-order amount).
* the pseudo-inverse is taken by eigen-decomposition of the cosine matrix D⁻¹GD⁻¹ (D = diag of gradient norms) with
  relative tolerance ``rcond``, so rank is decided by collinearity, not by the gradients' scales; G⁺ ≈ D⁻¹C⁺D⁻¹.
* ``max_ratio``: even above ``vanish_tol``, a small gradient g_j forces every other edge to cancel its component
  along g_j, with coefficients growing like 1/‖g_j‖ (a prototype saw 13 → 12,700 as UCE saturated). In the dual
  solve each norm is therefore floored at max_k ‖g_k‖ / max_ratio by giving g_j a fictitious extra component,
  orthogonal to everything, of length sqrt(floor² − ‖g_j‖²) (G_eff = G + diag(s²)). This bounds the coefficients at
  about ``max_ratio`` times the largest gradient's, keeps ⟨g_i, d⟩ = a_i > 0 exactly for every objective that is
  not floored, and lets a floored objective's influence fade smoothly as its gradient vanishes (its own first-order
  change is at most ‖g_j‖‖d‖, small by construction, and not guaranteed ≥ 0). ``None`` disables the floor.
* if the result is not a strictly common descent direction (rank-deficient G whose range misses the positive
  orthant, e.g. exactly opposite gradients), fall back to the ``mgda`` min-norm direction (still Gc ≥ 0), returned
  at its own length (it shrinks to 0 at Pareto-stationary points, where enlarging it would amplify noise).
* an all-zero G gives c = 0.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from mollm.aggregators._qp import min_norm_simplex
from mollm.aggregators.base import Aggregator, AggregatorOptions, register

_DESCENT_COS = 1e-8  # min cos(g_i, d) for the dual direction to count as strictly common descent


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
        c[active] = ca
        if opts.norm == "none":
            return c / math.sqrt(trace)  # undo the trace normalisation: raw c = G⁺a has units 1/‖g‖
        ref = float(norms.mean()) if opts.norm == "mean" else float(norms.max())
        return c * (ref / d_norm)
