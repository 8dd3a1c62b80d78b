"""The unit of data: one question-answer record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QARecord:
    """A prompt and its answer; ``source`` says where it came from (``file:line``) so errors can point at it.

    ``extra`` keeps any further fields a reader found (e.g. TOFU's ``paraphrased_answer``, ``perturbed_answer``).
    """

    question: str
    answer: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
