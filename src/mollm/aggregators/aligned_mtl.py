"""``aligned_mtl``: Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023, arXiv 2305.19000), from the Gramian only.

**Source checked.** TorchJD's ``AlignedMTLWeighting`` (github.com/TorchJD/torchjd,
``src/torchjd/aggregation/_aligned_mtl.py``, commit 46962c2; adapted there from the authors' SamsungLabs/MTL code),
which implements Algorithm 1 of the paper; the paper's abstract (align the singular components of the gradient
system so that its condition number is 1).

**Coefficient form.** Eigen-decompose G = V Λ Vᵀ and keep the r eigenvalues above m · 1.19e-7 · λ_max (TorchJD's
tolerance: float32 machine epsilon); with w the preference weights (default 1/m each),

    c = B w,   B = √σ · V_r Λ_r^{-1/2} V_rᵀ = √σ · (G⁺)^{1/2},

with σ = the smallest kept eigenvalue (``scale_mode="min"``, the paper and TorchJD's default), their median
(``"median"``) or their mean (``"rmse"``, the authors' code). The aligned gradients JᵀB have equal singular values
√σ, so d = JᵀBw. G is divided by its trace first; c is invariant to scaling all gradients, and an all-zero G gives
c = 0 (TorchJD returns B = I there; d = 0 either way).

**Never conflicts? No.** G c = √σ · G^{1/2} w, and the PSD square root G^{1/2} can map w = 1/m to a vector with a
negative entry even for 2 objectives, e.g. J = [[1, −1.5], [−1.5, 4]] (symmetric, so G^{1/2} = J): G^{1/2}·1 has
first entry −0.5, so the step makes objective 1 worse.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mollm.aggregators._qp import normalise
from mollm.aggregators.base import Aggregator, register
from mollm.aggregators.dualproj import DualProjOptions, preference_vector

_RANK_RTOL = float(np.finfo(np.float32).eps)  # × m × λ_max, as in TorchJD


class AlignedMTLOptions(DualProjOptions):
    """``preference``: one finite weight per objective (None: 1/m each); ``scale_mode``: which eigenvalue sets the
    common singular value (``min`` the paper's, ``median``, ``rmse`` the mean)."""

    scale_mode: Literal["min", "median", "rmse"] = "min"


@register
class AlignedMTL(Aggregator):
    """Aligned-MTL: the gradient system's singular values are equalised, then the preference weights are applied."""

    name = "aligned_mtl"
    Options = AlignedMTLOptions

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        w = preference_vector(self.name, self.options.preference, m)
        g, trace = normalise(gram)
        if trace == 0.0:
            return np.zeros(m)
        evals, evecs = np.linalg.eigh(g)
        keep = evals > m * _RANK_RTOL * evals[-1]
        lam, v = evals[keep], evecs[:, keep]
        mode = self.options.scale_mode
        sigma = float(lam.min() if mode == "min" else np.median(lam) if mode == "median" else lam.mean())
        return np.sqrt(sigma) * (v / np.sqrt(lam)) @ (v.T @ w)
