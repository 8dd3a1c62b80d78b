"""Read a list of prompts for generation: plain text (one per line), JSONL or CSV with a prompt/question column."""

from __future__ import annotations

import csv
from pathlib import Path

from mollm.core.errors import DataError
from mollm.data.jsonl import iter_jsonl

_PROMPT_FIELDS = ("prompt", "question", "instruction", "input")


def _pick(row: dict, where: str) -> str:
    for key in _PROMPT_FIELDS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise DataError(f"{where}: no non-empty prompt field; expected one of {list(_PROMPT_FIELDS)}, found {sorted(row)}")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from ``path``; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    prompts: list[str] = []
    if path.suffix == ".jsonl":
        for where, row in iter_jsonl(path, expected="a JSON object with a 'prompt' field"):
            prompts.append(_pick(row, where))
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), 2):
                prompts.append(_pick(row, f"{path}:{n}"))
    else:
        prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts found")
    return prompts
