"""``mgda`` (Désidéri 2012; Sener & Koltun 2018): the min-norm point of the convex hull of the gradients.

c = argmin_{c in simplex} cᵀGc (closed form for m = 2, exact active-set enumeration for m ≤ 8). Non-conflicting:
(Gc)_i ≥ cᵀGc ≥ 0 for every i (KKT); d = 0 exactly at a Pareto-stationary point.
"""

from __future__ import annotations

import numpy as np

from mollm.aggregators._qp import min_norm_simplex
from mollm.aggregators.base import Aggregator, register


@register
class MGDA(Aggregator):
    """Min-norm point of the gradients' convex hull (no options)."""

    name = "mgda"

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return min_norm_simplex(gram)
