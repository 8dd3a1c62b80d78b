"""``ngdiff``: Normalised Gradient Difference (Bu, Jin, Vinzamuri, Ramakrishna, Chang, Cevher & Hong, "Unlearning as
multi-task optimization: A normalized gradient difference approach with an adaptive learning rate", arXiv 2410.22086,
NAACL 2025), from the Gramian only.

**Source checked.** The paper's abstract and summary pages (arxiv.org/html/2410.22086v3, sciencestack.ai summary):
NGDiff updates along g = g_R/‖g_R‖ − g_F/‖g_F‖, with g_R the gradient of the retain loss and g_F the gradient of the
forget loss that is *maximised*, plus an automatic learning rate (GeN). The full text was not available here.

**Sign convention.** mollm objectives are all minimised: the forget objective (``ga`` = −NLL, ``npo``, ...) already has
gradient −g_F. The paper's direction is therefore the sum of the *unit* gradients, d = Σ_k h_k/‖h_k‖.

**Coefficient form.** ``groups`` partitions the objectives; h_k = Σ_{i∈k} g_i is a group's summed gradient, with
‖h_k‖² = Σ_{i,j∈k} G_ij. Then

    c_i = 1/‖h_k‖ for every i in group k   (0 for a group whose summed gradient is zero).

Default (``groups`` None): every objective is its own group, d = Σ_i g_i/‖g_i‖ (for 2 objectives exactly the paper's
rule). The paper's two-task form with several retain-side objectives is ``groups=[[0], [1, 2]]``: forget against the
sum of the rest. A group counts as zero when ‖h_k‖ ≤ 1e-8 Σ_{i∈k} ‖g_i‖ (cancellation to rounding) or all its
gradients are zero. ‖d‖ ≤ (number of groups) whatever the gradients' scale: d(sJ) = d(J) for s > 0, so c scales by
1/s. Any non-zero gradient, however small, gets a full unit share (the paper's rule; it amplifies a vanishing, noisy
gradient — see ``ds_mgda`` for why that matters in unlearning).

**Not implemented: the adaptive learning rate.** The paper's learning rate (GeN, a generalised Newton step fitted from
the loss at extra forward passes along d) needs loss values at perturbed parameters, which the Gramian does not
contain; it is a learning-rate schedule, not a coefficient. Use the run's own schedule.

**Never conflicts?** With two groups (in particular 2 objectives), ⟨d, h_k⟩ = ‖h_k‖(1 + cos(h_1, h_2)) ≥ 0 for both:
neither group's summed objective gets worse. With 3 or more groups it can conflict (two aligned unit gradients outvote
a third), and within a group only the sum is protected.
"""

from __future__ import annotations

import numpy as np
from pydantic import field_validator

from mollm.aggregators.base import Aggregator, AggregatorOptions, check_indices, register

_CANCEL_RTOL = 1e-8


class NGDiffOptions(AggregatorOptions):
    """``groups``: a partition of the objective indices; each group's summed gradient is normalised to unit length
    (None: every objective on its own)."""

    groups: list[list[int]] | None = None

    @field_validator("groups", mode="before")
    @classmethod
    def _check_groups(cls, v: object) -> object:
        if v is None:
            return v
        if not isinstance(v, list) or not v:
            raise ValueError(f"must be a non-empty list of groups (lists of objective indices), got {v!r}")
        for g in v:
            check_indices(g)
        flat = [i for g in v for i in g]
        if len(set(flat)) != len(flat):
            raise ValueError(f"an objective may be in one group only, got {v}")
        return v


@register
class NGDiff(Aggregator):
    """Normalised gradient difference: the sum of the unit (group) gradients."""

    name = "ngdiff"
    Options = NGDiffOptions

    def groups(self, m: int) -> list[list[int]]:
        """The groups for m objectives (every objective exactly once)."""
        groups = self.options.groups
        if groups is None:
            return [[i] for i in range(m)]
        flat = sorted(i for g in groups for i in g)
        if flat != list(range(m)):
            raise ValueError(
                f"aggregator 'ngdiff': option 'groups' {groups} must hold each of the {m} objective indices exactly once"
            )
        return groups

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        norms = np.sqrt(np.diag(gram))
        c = np.zeros(m)
        for g in self.groups(m):
            sq = float(gram[np.ix_(g, g)].sum())
            scale = float(norms[g].sum())
            if scale > 0.0 and sq > (_CANCEL_RTOL * scale) ** 2:
                c[g] = 1.0 / np.sqrt(sq)
        return c
