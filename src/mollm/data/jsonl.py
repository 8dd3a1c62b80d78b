"""Reading JSON-Lines files: one object per line, blank lines skipped, errors naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mollm.core.errors import DataError


def iter_jsonl(
    path: str | Path,
    *,
    text: str | None = None,
    label: str | None = None,
    expected: str = "a JSON object",
    on_truncated_last: Callable[[str], None] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("FILE:LINE", row)`` for each non-blank line of ``path`` (or of ``text``, read from it already).

    A line that is not valid JSON or not an object raises :class:`DataError` naming the file and line; ``expected``
    says what an object should hold (e.g. "an object with 'prompt' and 'response'"). With ``on_truncated_last``, an
    invalid *last* line (a log cut off by an interrupted run) is skipped and reported to it as ``"FILE:LINE"``.
    """
    label = label or str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{label}: not UTF-8 text ({err})") from None
    lines = text.splitlines()
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{label}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if on_truncated_last is not None and lineno == last:
                on_truncated_last(where)
                continue
            raise DataError(f"{where}: not valid JSON: {err.msg} (column {err.colno}); expected {expected}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected {expected}, got {json_type(row)}")
        yield where, row


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages ("an array", "a string", ...)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}")
