"""Cross-entropy objectives: ``nll`` (gradient descent on retain data) and its variants on transformed data,
``idk`` (the forget prompt answered by a refusal) and ``mismatch`` (the forget prompt answered by random normal
answers).

The variants differ from ``nll`` only in :meth:`prepare_records`, which the run loop calls once on the objective's
records before encoding them; the loss on the encoded batch is the same CE.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import Field, field_validator

from mollm.objectives import base
from mollm.objectives._common import model_logprobs, per_sample_mean, token_level_weights
from mollm.objectives.base import Batch, GradWeights, Objective
from mollm.objectives.registry import register

if TYPE_CHECKING:  # objectives must not import mollm.data at run time (mollm.data imports objectives.base)
    from mollm.data.records import QARecord
    from mollm.models.reference import Reference

#: Built-in refusals for ``idk`` (written for this project, in the style of TOFU's idontknow list).
DEFAULT_REFUSALS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure.",
    "I don't have that information.",
    "I'm not able to answer that.",
    "I have no idea.",
    "That's not something I know.",
    "I can't help with that.",
    "I'm afraid I don't know the answer.",
    "I'm not certain about that.",
    "I don't have any knowledge about that.",
    "Sorry, I can't answer that question.",
    "I have no information on that topic.",
    "That is beyond what I know.",
    "I'm unable to provide an answer to that.",
    "I couldn't tell you.",
    "I don't have the details on that.",
    "I'm not familiar with that.",
    "I cannot answer this question.",
    "Unfortunately, I don't know.",
    "I have no answer to that.",
)


class NLL(Objective):
    """``CE = mean_t -log p_t`` per sample, averaged over the batch (plain gradient descent)."""

    name = "nll"

    def loss(self, model: torch.nn.Module, batch: Batch, reference: Reference | None = None) -> torch.Tensor:
        logp, mask, lengths = model_logprobs(self.name, model, batch)
        return -per_sample_mean(logp, mask, lengths).mean()

    def weights_from_logprobs(
        self, logp: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None = None
    ) -> GradWeights:
        """``w = -1`` for every answer token (descent, the opposite of GA), on whatever batch the loss is given;
        for ``idk`` / ``mismatch`` that is the transformed batch (refusals, random answers), not the forget answer."""
        return token_level_weights(self.name, -torch.ones_like(logp), logp, mask)

    def prepare_records(
        self,
        records: Sequence[QARecord],
        *,
        normal: Sequence[QARecord] | None = None,
        refusals: Sequence[str] | None = None,
        rng: random.Random,
    ) -> list[QARecord]:
        """The records this objective trains on, made from ``records`` (identity for ``nll``)."""
        return list(records)


register(NLL)


class IDKOptions(base.Options):
    """Where the refusals come from: ``refusals`` (a list), else ``refusals_file``, else the built-in list."""

    refusals: list[str] | None = Field(None, description="refusal answers to draw from")
    refusals_file: Path | None = Field(
        None, description="text file, one refusal per line (a JSON string or {'text': ...} per line also works)"
    )

    @field_validator("refusals")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must hold at least one refusal")
            blank = [i for i, s in enumerate(value) if not s.strip()]
            if blank:
                raise ValueError(f"entries {blank} are blank")
        return value

    @field_validator("refusals_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


def read_refusals(path: Path) -> list[str]:
    """Refusals from a file: one per line, plain text (TOFU's ``idontknow.jsonl``), a JSON string or an object
    with a ``text``/``answer``/``response`` field. Blank lines are skipped; an empty file is an error."""
    out: list[str] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line[0] in '"{':
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = line  # plain text that happens to start with a quote
            if isinstance(value, dict):
                value = next((value[k] for k in ("text", "answer", "response") if k in value), None)
                if not isinstance(value, str):
                    raise ValueError(
                        f"{path}:{lineno}: expected a field 'text', 'answer' or 'response' holding a string"
                    )
            line = str(value).strip()
        if line:
            out.append(line)
    if not out:
        raise ValueError(f"{path}: no refusal found (expected one refusal per line)")
    return out


class IDK(NLL):
    """CE of a refusal ("I don't know") as the answer to each forget prompt (TOFU's IdkNLL / PO)."""

    name = "idk"
    Options = IDKOptions

    def refusal_list(self, refusals: Sequence[str] | None = None) -> list[str]:
        """The refusals in use: the argument, else option ``refusals``, else ``refusals_file``, else the built-ins."""
        if refusals is not None:
            chosen = [s.strip() for s in refusals if s.strip()]
            if not chosen:
                raise ValueError(f"objective '{self.name}': the given refusal list is empty")
            return chosen
        if self.options.refusals is not None:
            return list(self.options.refusals)
        if self.options.refusals_file is not None:
            return read_refusals(self.options.refusals_file)
        return list(DEFAULT_REFUSALS)

    def prepare_records(
        self,
        records: Sequence[QARecord],
        *,
        normal: Sequence[QARecord] | None = None,
        refusals: Sequence[str] | None = None,
        rng: random.Random,
    ) -> list[QARecord]:
        """Each forget record with its answer replaced by a refusal drawn at random (original kept in ``extra``)."""
        pool = self.refusal_list(refusals)
        return [replace(r, answer=rng.choice(pool), extra={**r.extra, "original_answer": r.answer}) for r in records]


register(IDK)


class MismatchOptions(base.Options):
    """``k`` >= 1 random normal answers per forget prompt (Yao et al.: 5)."""

    k: int = Field(5, ge=1, description="number of random normal answers paired with each forget prompt")


class Mismatch(NLL):
    """CE of random normal-data answers given the forget prompt (Yao et al. 2023's "mismatch" retain loss)."""

    name = "mismatch"
    Options = MismatchOptions

    def prepare_records(
        self,
        records: Sequence[QARecord],
        *,
        normal: Sequence[QARecord] | None = None,
        refusals: Sequence[str] | None = None,
        rng: random.Random,
    ) -> list[QARecord]:
        """``k`` records per forget record: its question with ``k`` answers drawn from ``normal`` (without replacement
        when ``normal`` has at least ``k`` usable answers, with replacement otherwise)."""
        answers = [r.answer for r in normal or () if r.answer.strip()]
        if not answers:
            raise ValueError(
                f"objective '{self.name}' needs normal data (e.g. TruthfulQA question-answer pairs) to draw random "
                "answers from, but " + ("none was given" if not normal else "every normal answer is blank")
            )
        k = self.options.k
        out: list[QARecord] = []
        for r in records:
            drawn = rng.sample(answers, k) if len(answers) >= k else rng.choices(answers, k=k)
            out.extend(replace(r, answer=a, extra={**r.extra, "original_answer": r.answer}) for a in drawn)
        return out


register(Mismatch)
