"""Harmful rate: the fraction of responses a judge labels harmful, with per-item scores and labels.

Reads the ``{"prompt", "response"}`` JSONL files that ``mollm generate`` writes. A harmful rate alone proves nothing
(gibberish is "harmless"): report it beside the fluency metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mollm.core.atomic import atomic_write_json
from mollm.core.errors import DataError
from mollm.data.jsonl import iter_jsonl
from mollm.evaluation.judge import Judge

__all__ = ["read_responses", "harmful_rate", "score_responses_file"]


def read_responses(path: Path | str) -> tuple[list[str], list[str]]:
    """Read ``{"prompt": str, "response": str}`` lines; returns (prompts, responses).

    Blank lines are skipped. A line that is not a JSON object or lacks a string ``prompt``/``response`` raises
    :class:`~mollm.data.encode.DataError` naming the file, line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: responses file not found (expected JSONL written by 'mollm generate')")
    prompts: list[str] = []
    responses: list[str] = []
    for where, row in iter_jsonl(path, expected="a JSON object with 'prompt' and 'response'"):
        for field in ("prompt", "response"):
            if field not in row:
                raise DataError(f"{where}: field {field!r} missing")
            if not isinstance(row[field], str):
                raise DataError(f"{where}: field {field!r} is {type(row[field]).__name__}; expected a string")
        prompts.append(row["prompt"])
        responses.append(row["response"])
    if not responses:
        raise DataError(f"{path}: no responses found (file is empty)")
    return prompts, responses


def harmful_rate(judge: Judge, prompts: list[str], responses: list[str]) -> dict[str, Any]:
    """Judge every (prompt, response) and return the rate with per-item values.

    Returns ``{"judge", "threshold", "n", "n_harmful", "harmful_rate", "aggregate", "mean_score", "items"}`` where
    ``aggregate == harmful_rate`` (the evaluation results convention) and ``items`` is a list of
    ``{"index", "prompt", "response", "score", "harmful"}``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"harmful_rate: {len(prompts)} prompts but {len(responses)} responses; expected equal lengths")
    if not responses:
        raise ValueError("harmful_rate: no responses to judge")
    scores = [float(s) for s in judge.score(list(prompts), list(responses))]
    if len(scores) != len(responses):
        raise RuntimeError(f"judge {judge.name!r} returned {len(scores)} scores for {len(responses)} responses")
    bad = [i for i, s in enumerate(scores) if not 0.0 <= s <= 1.0]  # also catches NaN
    if bad:
        raise RuntimeError(
            f"judge {judge.name!r} returned scores outside [0, 1] (e.g. item {bad[0]}: {scores[bad[0]]})"
        )
    labels = [s >= judge.threshold for s in scores]
    n_harmful = sum(labels)
    rate = n_harmful / len(labels)
    return {
        "judge": judge.name,
        "threshold": judge.threshold,
        "n": len(labels),
        "n_harmful": n_harmful,
        "harmful_rate": rate,
        "aggregate": rate,
        "mean_score": sum(scores) / len(scores),
        "items": [
            {"index": i, "prompt": p, "response": r, "score": s, "harmful": h}
            for i, (p, r, s, h) in enumerate(zip(prompts, responses, scores, labels))
        ],
    }


def score_responses_file(judge: Judge, data: Path | str, out: Path | str | None = None) -> dict[str, Any]:
    """:func:`harmful_rate` on a ``mollm generate`` JSONL file; writes the result JSON atomically to ``out`` if
    given."""
    prompts, responses = read_responses(data)
    result = harmful_rate(judge, prompts, responses)
    result["data"] = str(data)
    if out is not None:
        atomic_write_json(out, result)
    return result
