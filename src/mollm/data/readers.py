"""Readers for the three real data sets the project works with, from whatever path the user gives.

- TOFU (Maini et al. 2024): ``forgetXX.json`` / ``retainXX.json`` / ``*_perturbed.json`` (JSON arrays, or JSON Lines
  despite the ``.json`` extension for ``real_authors_perturbed`` and ``world_facts_perturbed``) and ``idontknow.jsonl``
  (plain text, one refusal per line).
- TruthfulQA (Lin et al. 2021): the generation-task CSV; question + "Best Answer", split 70/10/20 as in Yao et al.
- PKU-SafeRLHF (Ji et al.): JSON Lines, a prompt with two responses each labelled ``is_response_X_safe``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mollm.core.errors import DataError
from mollm.data.loading import load_records
from mollm.data.records import QARecord

TRUTHFULQA_SPLITS: tuple[str, ...] = ("train", "val", "test")
TRUTHFULQA_FRACTIONS: tuple[float, float] = (0.7, 0.1)  # train, val; test is the rest
PKU_PROMPT_SPLITS: tuple[str, ...] = ("train", "test")
PKU_TRAIN_FRACTION = 0.6  # of the distinct prompts; test is the rest


def read_tofu(path: str | Path, *, limit: int | None = None) -> list[QARecord]:
    """Read a TOFU split (question/answer); every other field, e.g. ``paraphrased_answer`` and the list
    ``perturbed_answer``, is kept in ``extra``. ``source`` is ``"file:index"`` (0-based, the order of the file and of
    TOFU's evaluation logs) for JSON arrays, ``"file:line"`` for the JSON-Lines files.
    """
    records = load_records(path, question_field="question", answer_field="answer", limit=limit)
    for r in records:
        value = r.extra.get("perturbed_answer")
        if value is not None and not (
            isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise DataError(f"{r.source}: field 'perturbed_answer' must be a non-empty list of non-empty strings")
        if "paraphrased_answer" in r.extra and not isinstance(r.extra["paraphrased_answer"], str):
            raise DataError(f"{r.source}: field 'paraphrased_answer' must be a string")
    return records


def read_tofu_refusals(path: str | Path) -> list[str]:
    """Read TOFU's ``idontknow.jsonl``: one refusal per line (plain text despite the extension; a line that is a
    JSON string literal is decoded). Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    out: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith('"'):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = text
            text = decoded.strip() if isinstance(decoded, str) else text
        if text.startswith(("{", "[")):
            raise DataError(f"{path}:{lineno}: expected one refusal string per line, found JSON {text[:40]!r}")
        out.append(text)
    if not out:
        raise DataError(f"{path}: no refusal strings found (the file is empty)")
    return out


def read_truthfulqa(
    path: str | Path,
    split: Literal["train", "val", "test"] | None = None,
    seed: int = 0,
    *,
    limit: int | None = None,
) -> list[QARecord]:
    """Read TruthfulQA.csv: question + "Best Answer".

    ``extra`` holds ``correct_answers`` and ``incorrect_answers`` (lists, split on ``"; "``), ``type``, ``category``
    and ``source_url``. ``split=None`` returns every row in file order; otherwise the rows are split 70/10/20 into
    train/val/test exactly as ``torch.utils.data.random_split(rows, [int(.7n), int(.1n), rest],
    generator=torch.Generator().manual_seed(seed))`` does (Yao et al.'s split, made reproducible by the seed), in
    that permutation's order.
    """
    if split is not None and split not in TRUTHFULQA_SPLITS:
        raise ValueError(f"TruthfulQA split must be one of {', '.join(TRUTHFULQA_SPLITS)} or None, got {split!r}")
    rows = load_records(path, question_field="Question", answer_field="Best Answer")
    records = [_truthfulqa_record(r) for r in rows]
    if split is not None:
        records = [records[i] for i in truthfulqa_split_indices(len(records), seed)[split]]
    return records[:limit] if limit is not None else records


def truthfulqa_split_indices(n: int, seed: int = 0) -> dict[str, list[int]]:
    """Indices of the 70/10/20 train/val/test split of ``n`` rows (see :func:`read_truthfulqa`)."""
    import torch

    n_train = int(TRUTHFULQA_FRACTIONS[0] * n)
    n_val = int(TRUTHFULQA_FRACTIONS[1] * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def _truthfulqa_record(r: QARecord) -> QARecord:
    extra: dict[str, Any] = {}
    for column, key in (("Correct Answers", "correct_answers"), ("Incorrect Answers", "incorrect_answers")):
        value = r.extra.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{r.source}: field {column!r} must be a non-empty string of answers separated by '; '")
        extra[key] = [a.strip() for a in value.split("; ") if a.strip()]
    for column, key in (("Type", "type"), ("Category", "category"), ("Source", "source_url")):
        if column in r.extra:
            extra[key] = r.extra[column]
    return QARecord(question=r.question, answer=r.answer, source=r.source, extra=extra)


@dataclass(frozen=True)
class LabelledResponse:
    """A prompt, one response to it and whether that response is safe (PKU-SafeRLHF's label); for training a judge."""

    prompt: str
    response: str
    is_safe: bool
    source: str = ""


def read_pku_saferlhf(
    path: str | Path,
    *,
    which: Literal["unsafe", "safe", "all"] = "unsafe",
    prompts: Literal["train", "test"] | None = None,
    seed: int = 0,
    one_per_prompt: bool = False,
    limit: int | None = None,
) -> list[QARecord]:
    """Read PKU-SafeRLHF JSON Lines as (prompt, response) records, two per row.

    ``which="unsafe"`` (the forget set) keeps responses with ``is_response_X_safe == false``; ``"safe"`` the others;
    ``"all"`` both. ``source`` is ``"file:line:response_X"``; ``extra`` has ``is_safe``, ``response_index``,
    ``harm_category``, ``severity_level`` and the row's other fields that concern that response or the pair.

    ``prompts`` keeps one side of a split **by prompt** (:func:`pku_prompt_split`), so that a model trained on the
    ``train`` prompts is evaluated on ``test`` prompts it never saw. ``one_per_prompt`` keeps only the first kept
    response of each distinct prompt: generation-based evaluation scores prompts, and a prompt with two unsafe
    responses would otherwise count twice.
    """
    if which not in ("unsafe", "safe", "all"):
        raise ValueError(f"which must be 'unsafe', 'safe' or 'all', got {which!r}")
    if prompts not in (None, *PKU_PROMPT_SPLITS):
        raise ValueError(f"prompts must be one of {', '.join(PKU_PROMPT_SPLITS)} or None, got {prompts!r}")
    items = _pku_items(path)
    keep = pku_prompt_split([r.question for r in items], seed)[prompts] if prompts is not None else None
    out: list[QARecord] = []
    seen: set[str] = set()
    for item in items:
        if keep is not None and item.question not in keep:
            continue
        if one_per_prompt and item.question in seen:
            continue
        if which == "all" or (which == "safe") == item.extra["is_safe"]:
            seen.add(item.question)
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        where = f" among the {prompts} prompts (seed {seed})" if prompts is not None else ""
        raise DataError(f"{path}: no {which} responses found{where}")
    return out


def pku_prompt_split(questions: Sequence[str], seed: int = 0) -> dict[str, set[str]]:
    """The seeded split of the distinct prompts into ``train`` (60 %) and ``test`` (the rest).

    Distinct prompts, in order of first appearance, are permuted by ``torch.randperm`` with a generator seeded by
    ``seed``; the first ``int(0.6 n)`` are ``train``. Both responses of a prompt land on the same side.
    """
    import torch

    distinct = list(dict.fromkeys(questions))
    n_train = int(PKU_TRAIN_FRACTION * len(distinct))
    perm = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"train": {distinct[i] for i in perm[:n_train]}, "test": {distinct[i] for i in perm[n_train:]}}


def read_pku_labelled(path: str | Path) -> list[LabelledResponse]:
    """Every response of a PKU-SafeRLHF file as a labelled (prompt, response, is_safe) triple, in file order."""
    return [
        LabelledResponse(prompt=r.question, response=r.answer, is_safe=r.extra["is_safe"], source=r.source)
        for r in _pku_items(path)
    ]


def _pku_items(path: str | Path) -> list[QARecord]:
    rows = load_records(path, question_field="prompt", answer_field="response_0")
    out: list[QARecord] = []
    for row in rows:
        fields = {"response_0": row.answer, **row.extra}
        for i in (0, 1):
            response_key, label_key = f"response_{i}", f"is_response_{i}_safe"
            if response_key not in fields:
                raise DataError(f"{row.source}: missing field {response_key!r} (fields found: {', '.join(fields)})")
            response = fields[response_key]
            if not isinstance(response, str) or not response.strip():
                raise DataError(f"{row.source}: field {response_key!r} must be a non-empty string")
            label = fields.get(label_key)
            if not isinstance(label, bool):
                raise DataError(f"{row.source}: field {label_key!r} must be true or false, got {json.dumps(label)}")
            extra: dict[str, Any] = {
                "is_safe": label,
                "response_index": i,
                "harm_category": fields.get(f"response_{i}_harm_category"),
                "severity_level": fields.get(f"response_{i}_severity_level"),
                "response_source": fields.get(f"response_{i}_source"),
                "prompt_source": fields.get("prompt_source"),
                "better_response_id": fields.get("better_response_id"),
                "safer_response_id": fields.get("safer_response_id"),
            }
            out.append(
                QARecord(question=row.question, answer=response, source=f"{row.source}:{response_key}", extra=extra)
            )
    return out
