"""``pcgrad`` (Yu et al. 2020, "Gradient Surgery"), computed from the Gramian only.

For each objective i, in a fresh random order of the others j (torchjd's variant: j ≠ i), the running vector
v (initially g_i) loses its projection onto g_j whenever ⟨v, g_j⟩ < 0; the projected vectors are summed. Every v
is tracked as a coefficient vector w over the gradients (v = Jᵀw), so ⟨v, g_j⟩ = (Gw)_j and no parameter-sized
vector is touched. Reduces conflict but does not guarantee G c ≥ 0.

State: the generator (``state_dict()["generator"]``: its byte state as a list of ints), so a resumed run draws the
same orders as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mollm.aggregators._qp import normalise
from mollm.aggregators.base import Aggregator, AggregatorOptions, check_state, register


class PCGradOptions(AggregatorOptions):
    """``seed``: seed of the torch.Generator drawing the orders (None: non-deterministic)."""

    seed: int | None = Field(default=None, ge=0, strict=True)


@register
class PCGrad(Aggregator):
    """Projecting conflicting gradients. The generator advances on every call (a new order each step)."""

    name = "pcgrad"
    Options = PCGradOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.generator = torch.Generator()
        if self.options.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.options.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raw = check_state(self.name, state, {"generator"})["generator"]
        current = self.generator.get_state()
        if (
            not isinstance(raw, list)
            or len(raw) != current.numel()
            or not all(isinstance(b, int) and 0 <= b < 256 for b in raw)
        ):
            raise ValueError(f"aggregator '{self.name}': state 'generator' must be {current.numel()} bytes (ints)")
        self.generator.set_state(torch.tensor(raw, dtype=torch.uint8))

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        # Always draw the permutations, so the random stream does not depend on G.
        orders = [torch.randperm(m, generator=self.generator).tolist() for _ in range(m)]
        g, trace = normalise(gram)
        if trace == 0.0:
            return np.zeros(m)
        total = np.zeros(m)
        for i in range(m):
            w = np.zeros(m)
            w[i] = 1.0
            for j in orders[i]:
                if j == i or not g[j, j] > 0.0:
                    continue
                inner = float(g[j] @ w)
                if inner < 0.0:
                    w[j] -= inner / g[j, j]
            total += w
        return total
