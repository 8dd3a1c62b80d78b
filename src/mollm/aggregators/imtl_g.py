"""``imtl_g``: IMTL-G, the gradient balance of Impartial Multi-Task Learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao &
Zhang, "Towards Impartial Multi-task Learning", ICLR 2021), from the Gramian only.

**Source checked.** The paper's abstract (ICLR 2021 text: scaling factors in closed form "such that the aggregated
gradient ... has equal projections onto individual tasks") and its closed form α_{2:m} = g_1 Uᵀ (D Uᵀ)⁻¹,
α_1 = 1 − Σ α_{2:m} with U rows u_1 − u_i (unit gradients) and D rows g_1 − g_i; TorchJD's ``IMTLGWeighting``
(github.com/TorchJD/torchjd, ``src/torchjd/aggregation/_imtl_g.py``, commit 46962c2), which computes
v = G⁺ n (n_i = ‖g_i‖) and α = v / Σv (zeros when |Σv| < 1e-12).

**Definition implemented (the paper's conditions).** d = Σ α_i g_i has equal projections on the unit gradients,
⟨d, g_i⟩/‖g_i‖ = k for all i, and Σ α_i = 1. With C = D⁻¹GD⁻¹ (cosines, D = diag of norms) and β = Dα this is the
bordered linear system

    C β − k 1 = 0,   Σ_i β_i/‖g_i‖ = 1,

solved by least squares (SVD, relative cut-off 1e-12; the last row scaled to unit length) and α = D⁻¹β. Where G is
invertible this is TorchJD's α = G⁻¹n / 1ᵀG⁻¹n exactly (k = 1/1ᵀG⁻¹n). Where G is singular the two differ: TorchJD's
G⁺n need not satisfy the equal-projection condition, while the system above still does when it has a solution (for
g_2 = −t·g_1 it gives α = (t, 1)/(1 + t) and d = 0, as the paper's closed form; TorchJD's weights make one objective
worse there). Objectives with an exactly zero gradient (no unit gradient) get α = 0 and the rest sum to 1. c is
invariant to scaling all gradients; note that Σα = 1 makes ‖d‖ shrink with the smallest non-zero gradient
(orthogonal g_1, ε·g_2: ‖d‖ ≈ ε√2 ‖g_1‖).

**Never conflicts? For 2 objectives, yes; for 3 or more, no.** (G c)_i = k‖g_i‖ for every objective, so all share
the sign of k. For m = 2, C⁻¹1 = 1/(1 + cos) · 1 and k = (1 + cos)/(1/‖g_1‖ + 1/‖g_2‖) ≥ 0. For m ≥ 3, 1ᵀG⁻¹n can
be negative and then *every* objective gets worse: J = [[0, 3, −2], [−3, 3, 0], [−1, 2, −1]] gives G c < 0 in all
three entries.
"""

from __future__ import annotations

import numpy as np

from mollm.aggregators.base import Aggregator, register

_LSTSQ_RCOND = 1e-12


def imtl_g_weights(gram: np.ndarray) -> np.ndarray:
    """α with equal projections ⟨d, g_i⟩/‖g_i‖ and Σα = 1 (see the module docstring); zeros for an all-zero G."""
    m = gram.shape[0]
    norms = np.sqrt(np.diag(gram))
    active = np.nonzero(norms > 0.0)[0]
    alpha = np.zeros(m)
    if active.size == 0:
        return alpha
    n = norms[active]
    cos = gram[np.ix_(active, active)] / np.outer(n, n)
    k = active.size
    a = 1.0 / n
    a_hat = a / np.linalg.norm(a)
    system = np.zeros((k + 1, k + 1))
    system[:k, :k] = cos
    system[:k, k] = -1.0
    system[k, :k] = a_hat
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    x = np.linalg.lstsq(system, rhs, rcond=_LSTSQ_RCOND)[0]
    # a_hatᵀβ' = 1 with β' = ‖a‖β, so α = β/n = β' · a_hat.
    alpha[active] = x[:k] * a_hat
    return alpha


@register
class IMTLG(Aggregator):
    """IMTL-G: the combination with equal projections on every unit gradient, weights summing to 1 (no options)."""

    name = "imtl_g"

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return imtl_g_weights(gram)
