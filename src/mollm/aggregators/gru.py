"""``gru``: Gradient-Rectified Unlearning (Wang et al. 2025, "GRU: Mitigating the Trade-off between Unlearning and
Retention for Large Language Models", arXiv 2503.09117), from the Gramian only.

**Source checked.** The paper's abstract (arXiv 2503.09117 v1/v3: "project the unlearning gradient onto the
orthogonal space of that gradient harmful for retention, ensuring minimal deviation from its original direction") and
the authors' code, github.com/tmlr-group/GRU (``dataloader_faster_refactor1.py``: ``pipeline``,
``orthogonal_component_precise``, ``training_step``), read at commit fbbf93a. The full paper text was not available
here, so the details below follow the authors' code.

**Method.** g_f is the forget objective's gradient (the gradient of the unlearning loss being minimised), g_r the
retain gradient. GRU is the closest vector to g_f in the half-space {x : ⟨x, g_r⟩ ≥ 0}:

    g̃_f = g_f − min(0, ⟨g_f, g_r⟩) / ‖g_r‖² · g_r,

i.e. the conflicting component is removed only when ⟨g_f, g_r⟩ < 0. The update is g̃_f alone; the authors'
``_gru+ce`` variant adds ``ce_coeff`` × the (current) retain gradient afterwards, here ``retain_weight``.

**Coefficient form.** Objective ``forget`` (default 0) is f; the objectives in ``retain`` (default: all others) are
summed, g_r = Σ_{j∈R} g_j, so s = ⟨g_f, g_r⟩ = Σ_{j∈R} G_fj and n = ‖g_r‖² = Σ_{j,k∈R} G_jk. With
λ = max(0, −s/n) (0 when n = 0):

    c_f = 1,   c_j = λ + retain_weight for j ∈ R,   c_x = 1 for every other objective x.

Objectives in neither role ("pass-through", only when ``retain`` is given) are added unprojected, as the authors'
``_gru+KL`` variant adds the KL gradient after the rectification. c is invariant to scaling all gradients.

**EMA of the retain gradient (``ema_decay``), and what is kept instead.** The authors smooth the retain *vector*,
ḡ_r ← γ g_r + (1 − γ) ḡ_r (their ``moving_avg`` γ weights the new gradient; γ = 0.8 in their configs, i.e.
``ema_decay`` = 1 − γ = 0.2 here), and project g_f against ḡ_r. That is not expressible from G: ⟨g_f^t, ḡ_r^t⟩
needs inner products between gradients of different steps, and ḡ_r is not a combination of the current gradients, so
d = Σ c_i g_i cannot contain it. What this aggregator keeps instead are moving averages of the two inner products that
define the projection (β = ``ema_decay``, started at 0):

    s̄ ← β s̄ + (1 − β) s,   n̄ ← β n̄ + (1 − β) n,   λ = max(0, −s̄/n̄),

applied to the current retain gradient (c_j = λ + retain_weight). This is GRU run on an exponential moving average of
the Gramian (its (f, R) entries); zero start and bias correction give the same ratio. The vector EMA's
⟨g_f^t, ḡ_r^t⟩ = (1 − β) Σ_k β^{t−k} ⟨g_f^t, g_r^k⟩ is approximated by (1 − β) Σ_k β^{t−k} ⟨g_f^k, g_r^k⟩ = s̄: exact
when the forget gradient is constant across steps (the retain gradient may vary — its noise is what the EMA is for).
Differences from the vector EMA: (1) s̄ smooths ⟨g_f, g_r⟩, so the forget gradient's history enters too, not only
the retain gradient's; (2) n̄ averages ‖g_r‖², which exceeds ‖ḡ_r‖² by the retain gradient's variance across steps, so noisy retain
gradients give a smaller λ than the vector EMA would; (3) the removed component lies along the current g_r, not ḡ_r.
With a retain gradient that is constant across steps, the vector EMA equals no EMA, while this one still smooths
⟨g_f, g_r⟩ over past forget gradients. The state advances on every call; ``state_dict()`` holds s̄, n̄ and the
number of calls.

**Never conflicts?** Without EMA and without pass-through objectives, ⟨d, g_r⟩ = max(s, 0) + retain_weight·n ≥ 0:
the step never makes the summed retain objective worse to first order. With 2 objectives (forget, retain) and
``retain_weight`` = 0 it conflicts with neither: also ⟨d, g_f⟩ = ‖g_f‖² − max(0, −s)²/n ≥ 0 (Cauchy–Schwarz).
It can conflict with one of several retain objectives (only their sum is protected), with the forget objective when
``retain_weight`` > 0, and with the current retain gradient when the EMA is on (as the authors' vector EMA can).

Not implemented: the authors' optional cosine clipping (``cos_clip``, off in their configs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from mollm.aggregators.base import Aggregator, AggregatorOptions, check_indices, check_state, register

_STATE_KEYS = {"calls", "ema_inner", "ema_retain_sq"}


class GRUOptions(AggregatorOptions):
    """``forget``: index of the forget objective; ``retain``: indices whose summed gradient is protected (None: all
    others); ``retain_weight``: coefficient of the current retain gradients added after the rectification;
    ``ema_decay``: weight of the past in the moving averages of ⟨g_f, g_r⟩ and ‖g_r‖² (None: no averaging)."""

    forget: int = Field(default=0, ge=0, strict=True)
    retain: list[int] | None = None
    retain_weight: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    ema_decay: float | None = Field(default=None, ge=0.0, lt=1.0, allow_inf_nan=False)

    @field_validator("retain", mode="before")
    @classmethod
    def _check_retain(cls, v: object) -> object:
        return v if v is None else check_indices(v)


@register
class GRU(Aggregator):
    """Gradient-rectified unlearning: the forget gradient loses its component conflicting with the retain gradient."""

    name = "gru"
    Options = GRUOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        opts = self.options
        if opts.retain is not None and opts.forget in opts.retain:
            raise ValueError(f"aggregator 'gru': option 'retain' {opts.retain} contains the forget index {opts.forget}")
        self._calls = 0
        self._inner = 0.0  # s̄
        self._retain_sq = 0.0  # n̄

    def roles(self, m: int) -> tuple[int, list[int], list[int]]:
        """(forget index, retain indices, pass-through indices) for m objectives."""
        opts = self.options
        retain = [j for j in range(m) if j != opts.forget] if opts.retain is None else list(opts.retain)
        bad = [i for i in [opts.forget, *retain] if i >= m]
        if bad:
            raise ValueError(f"aggregator 'gru': objective indices {bad} out of range for {m} objectives")
        if not retain:
            raise ValueError(f"aggregator 'gru': needs a retain objective besides the forget one, got {m} objective(s)")
        others = [x for x in range(m) if x != opts.forget and x not in retain]
        return opts.forget, retain, others

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        f, retain, _ = self.roles(m)
        s = float(gram[f, retain].sum())
        n = max(float(gram[np.ix_(retain, retain)].sum()), 0.0)
        beta = self.options.ema_decay
        if beta is not None:
            self._inner = beta * self._inner + (1.0 - beta) * s
            self._retain_sq = beta * self._retain_sq + (1.0 - beta) * n
            s, n = self._inner, self._retain_sq
        self._calls += 1
        lam = max(0.0, -s / n) if n > 0.0 else 0.0
        c = np.ones(m)
        c[retain] = lam + self.options.retain_weight
        return c

    def state_dict(self) -> dict[str, Any]:
        if self.options.ema_decay is None:
            return {}
        return {"calls": self._calls, "ema_inner": self._inner, "ema_retain_sq": self._retain_sq}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.options.ema_decay is None:
            super().load_state_dict(state)
            return
        state = check_state(self.name, state, _STATE_KEYS)
        calls, inner, retain_sq = state["calls"], state["ema_inner"], state["ema_retain_sq"]
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise ValueError(f"aggregator 'gru': state 'calls' must be a non-negative int, got {calls!r}")
        for key, v in (("ema_inner", inner), ("ema_retain_sq", retain_sq)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValueError(f"aggregator 'gru': state '{key}' must be a finite number, got {v!r}")
        if retain_sq < 0:
            raise ValueError(f"aggregator 'gru': state 'ema_retain_sq' must be >= 0, got {retain_sq!r}")
        self._calls, self._inner, self._retain_sq = calls, float(inner), float(retain_sq)
