"""Load question-answer records from JSONL, JSON, CSV or Parquet files, or from a Hugging Face dataset id.

Every record remembers where it came from (``QARecord.source``): ``"path:line"`` for JSON Lines and CSV (1-based
physical line where the record starts), ``"path:index"`` for JSON arrays and Parquet (0-based position, the same
order as the file, so evaluation logs indexed by position line up). Every error is a :class:`DataError` whose
message starts with that location and names the field at fault.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mollm.core.errors import DataError
from mollm.data.jsonl import iter_jsonl, json_type
from mollm.data.records import QARecord

QUESTION_FIELDS: tuple[str, ...] = ("question", "prompt", "instruction", "input")
"""Field names tried, in this order (case-insensitively), when ``question_field`` is not given."""

ANSWER_FIELDS: tuple[str, ...] = ("answer", "response", "output", "completion", "target")
"""Field names tried, in this order (case-insensitively), when ``answer_field`` is not given."""

FILE_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet")

Row = Mapping[str, Any]


def load_records(
    source: str | Path,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    split: str = "train",
    limit: int | None = None,
    hf_config: str | None = None,
) -> list[QARecord]:
    """Read question-answer records from a file or a Hugging Face dataset.

    Args:
        source: a ``.jsonl``, ``.json`` (an array of objects, an object with a list under ``"data"``, or JSON Lines
            despite the extension), ``.csv`` (with a header) or ``.parquet`` file; or, when it is not an existing
            path, a Hugging Face dataset id loaded with ``datasets.load_dataset`` (needs the hub to be reachable).
        question_field: the field holding the question; by default the first of :data:`QUESTION_FIELDS` present.
        answer_field: the field holding the answer; by default the first of :data:`ANSWER_FIELDS` present.
        split: the split of a Hugging Face dataset (ignored for files).
        limit: keep only the first ``limit`` records.
        hf_config: the configuration name of a Hugging Face dataset, if it has several.

    Returns:
        The records in file order; ``extra`` holds every other field of the row.

    Raises:
        DataError: unreadable file, malformed line, missing/non-string/empty field, no records, unknown extension.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    if question_field is not None and question_field == answer_field:
        raise ValueError(f"question_field and answer_field are both {question_field!r}; they must differ")
    label = str(source)
    rows = _rows(source, split=split, hf_config=hf_config)
    records = _to_records(rows, question_field=question_field, answer_field=answer_field, limit=limit)
    if not records:
        raise DataError(f"{label}: no records found (the data set is empty)")
    return records


def load_hub_dataset(
    dataset_id: str,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    split: str = "train",
    limit: int | None = None,
    hf_config: str | None = None,
) -> list[QARecord]:
    """Like :func:`load_records` but always from the Hugging Face hub (``datasets.load_dataset``), never a file.

    ``source`` of each record is ``"ID[SPLIT]:index"``. Offline or unknown ids raise :class:`DataError`.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    rows = _hub_rows(dataset_id, split=split, hf_config=hf_config)
    records = _to_records(rows, question_field=question_field, answer_field=answer_field, limit=limit)
    if not records:
        raise DataError(f"{dataset_id}[{split}]: no records found (the data set is empty)")
    return records


def _to_records(
    rows: Iterator[tuple[str, Row]],
    *,
    question_field: str | None,
    answer_field: str | None,
    limit: int | None,
) -> list[QARecord]:
    records: list[QARecord] = []
    q_name = a_name = None
    for where, row in rows:
        if q_name is None:
            # Detect once, from the first row, so every row is read with the same mapping.
            q_name = _pick_field(where, row, question_field, QUESTION_FIELDS, "question", "question_field")
            a_name = _pick_field(where, row, answer_field, ANSWER_FIELDS, "answer", "answer_field")
            if q_name == a_name:
                raise DataError(f"{where}: the question and answer fields are both {q_name!r}; name them explicitly")
        question = _text_field(where, row, q_name)
        answer = _text_field(where, row, a_name)
        extra = {k: v for k, v in row.items() if k not in (q_name, a_name)}
        records.append(QARecord(question=question, answer=answer, source=where, extra=extra))
        if limit is not None and len(records) >= limit:
            break
    return records


def _pick_field(where: str, row: Row, explicit: str | None, candidates: Sequence[str], role: str, option: str) -> str:
    if explicit is not None:
        if explicit not in row:
            raise DataError(f"{where}: missing field {explicit!r} (fields found: {_field_list(row)})")
        return explicit
    by_lower = {str(k).lower(): k for k in row}
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    raise DataError(
        f"{where}: no {role} field found (looked for {', '.join(candidates)}; fields found: {_field_list(row)}); "
        f"pass {option}= to name it"
    )


def _text_field(where: str, row: Row, name: str) -> str:
    if name not in row:
        raise DataError(f"{where}: missing field {name!r} (fields found: {_field_list(row)})")
    value = row[name]
    if value is None:
        raise DataError(f"{where}: field {name!r} is null (missing value); expected a non-empty string")
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(f"{where}: field {name!r} must be a non-empty string, got {type(value).__name__} {shown}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty; expected a non-empty string")
    return value


def _field_list(row: Row) -> str:
    return ", ".join(repr(str(k)) for k in row) if row else "none"


# ---------------------------------------------------------------------------------------------------------------
# Row readers: each yields (location, row) pairs.


def _rows(source: str | Path, *, split: str, hf_config: str | None) -> Iterator[tuple[str, Row]]:
    path = Path(source).expanduser()
    if path.is_file():
        return _file_rows(path, label=str(source))
    if path.is_dir():
        raise DataError(f"{source}: is a directory; expected a {', '.join(FILE_EXTENSIONS)} file or a hub dataset id")
    if isinstance(source, Path) or _looks_like_path(str(source)):
        raise DataError(f"{source}: file not found")
    return _hub_rows(str(source), split=split, hf_config=hf_config)


def _looks_like_path(text: str) -> bool:
    # A hub id is "name" or "owner/name"; anything with a data-file extension or a path prefix is meant as a file.
    lower = text.lower()
    return (
        lower.endswith(FILE_EXTENSIONS + (".txt", ".tsv", ".gz"))
        or text.startswith(("/", "./", "../", "~", "\\"))
        or text.count("/") > 1
        or Path(text).exists()
    )


def _file_rows(path: Path, *, label: str) -> Iterator[tuple[str, Row]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path, label, _read_text(path, label))
    if suffix == ".json":
        return _json_rows(path, label)
    if suffix == ".csv":
        return _csv_rows(path, label)
    if suffix == ".parquet":
        return _parquet_rows(path, label)
    raise DataError(
        f"{label}: unknown file extension {path.suffix or '(none)'!r}; expected one of {', '.join(FILE_EXTENSIONS)}"
    )


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: not UTF-8 text ({e})") from e


def _jsonl_rows(path: Path, label: str, text: str) -> Iterator[tuple[str, Row]]:
    yield from iter_jsonl(path, text=text, label=label)


def _json_rows(path: Path, label: str) -> Iterator[tuple[str, Row]]:
    text = _read_text(path, label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # Some published ".json" files (e.g. TOFU's real_authors/world_facts) are JSON Lines: one object per line.
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _jsonl_rows(path, label, text)
        raise DataError(f"{label}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from e
    if isinstance(data, dict):
        if not isinstance(data.get("data"), list):
            raise DataError(
                f"{label}: expected a JSON array of objects or an object with a list under 'data'; "
                f"found an object with keys {_field_list(data)}"
            )
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{label}: expected a JSON array of objects, got {json_type(data)}")
    return _indexed_rows(data, label, "JSON object")


def _indexed_rows(items: list[Any], label: str, kind: str) -> Iterator[tuple[str, Row]]:
    for i, row in enumerate(items):
        if not isinstance(row, dict):
            raise DataError(f"{label}:{i}: item {i} should be a {kind}, got {json_type(row)}")
        yield f"{label}:{i}", row


def _csv_rows(path: Path, label: str) -> Iterator[tuple[str, Row]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:  # reading the header here makes line_num count it
                return
            start = reader.line_num + 1
            for row in reader:
                # A quoted cell may span lines: the record's line is where it starts.
                where = f"{label}:{start}"
                start = reader.line_num + 1
                if None in row:
                    raise DataError(f"{where}: row has more cells than the header ({len(reader.fieldnames or [])})")
                missing = [k for k, v in row.items() if v is None]
                if missing:
                    raise DataError(f"{where}: row has fewer cells than the header; missing field {missing[0]!r}")
                yield where, row
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise DataError(f"{label}: invalid CSV: {e}") from e


def _parquet_rows(path: Path, label: str) -> Iterator[tuple[str, Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{label}: not a readable Parquet file ({e})") from e
    return _indexed_rows(table.to_pylist(), label, "row")


def _hub_rows(dataset_id: str, *, split: str, hf_config: str | None) -> Iterator[tuple[str, Row]]:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, hf_config, split=split)
    except Exception as e:  # the hub raises many types (offline, not found, gated); all mean "cannot load"
        raise DataError(
            f"{dataset_id}: not an existing file, and loading it as a Hugging Face dataset (split {split!r}) failed: "
            f"{type(e).__name__}: {e}. If you are offline, give a local .jsonl/.json/.csv/.parquet file instead."
        ) from e
    label = f"{dataset_id}[{split}]"
    for i, row in enumerate(ds):
        yield f"{label}:{i}", row
