"""Unlearning objectives (see ``shared/notes/objectives.md``), looked up by name.

>>> from mollm.objectives import get, available
>>> loss = get("uce", eps=0.5)(model, batch)            # doctest: +SKIP
>>> get("npo", beta=0.1)(model, batch, reference)       # doctest: +SKIP

Objectives whose training data is transformed (``idk``, ``mismatch``) expose ``prepare_records``; call
:func:`prepare_records` on every objective's records before encoding them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mollm.objectives.base import IGNORE_INDEX, Batch, Objective, Options, token_logprobs

# Importing the modules registers their objectives.
from mollm.objectives.ga import GA  # noqa: E402
from mollm.objectives.kl import KL  # noqa: E402
from mollm.objectives.nll import DEFAULT_REFUSALS, IDK, NLL, Mismatch, read_refusals  # noqa: E402
from mollm.objectives.npo import NPO  # noqa: E402
from mollm.objectives.registry import available, get, objective_class, register
from mollm.objectives.rmu import RMU, RMURetain, steering_vector  # noqa: E402
from mollm.objectives.simnpo import SimNPO  # noqa: E402
from mollm.objectives.uce import UCE  # noqa: E402
from mollm.objectives.weighted import TNPO, WGA, WTNPO  # noqa: E402

if TYPE_CHECKING:
    from mollm.data.records import QARecord


def prepare_records(
    objective: Objective,
    records: Sequence[QARecord],
    *,
    normal: Sequence[QARecord] | None = None,
    refusals: Sequence[str] | None = None,
    rng: random.Random,
) -> list[QARecord]:
    """The records ``objective`` trains on: its own ``prepare_records`` if it has one, else ``records`` unchanged."""
    hook = getattr(objective, "prepare_records", None)
    if hook is None:
        return list(records)
    return hook(records, normal=normal, refusals=refusals, rng=rng)


__all__ = [
    "DEFAULT_REFUSALS",
    "GA",
    "IDK",
    "IGNORE_INDEX",
    "KL",
    "NLL",
    "NPO",
    "RMU",
    "SimNPO",
    "TNPO",
    "UCE",
    "WGA",
    "WTNPO",
    "Batch",
    "Mismatch",
    "Objective",
    "Options",
    "RMURetain",
    "available",
    "get",
    "objective_class",
    "prepare_records",
    "read_refusals",
    "register",
    "steering_vector",
    "token_logprobs",
]
