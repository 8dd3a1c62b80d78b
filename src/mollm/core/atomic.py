"""The one write policy of mollm's outputs: a reader, or a run interrupted mid-write, sees the old version or the
complete new one, never a partial one.

* files: a temp file in the same folder, then a rename (:func:`atomic_write_bytes` / ``_text`` / ``_json``);
* folders: built in a temp folder beside the target, then swapped in, the old one deleted last
  (:func:`atomic_directory`, :func:`replace_dir`);
* JSON-Lines logs: appended line by line, never rewritten (:func:`append_jsonl`); readers skip a truncated last line;
* JSON values: through :func:`json_safe` (NaN/inf become null).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        # Leave no stray temp file behind on failure (including KeyboardInterrupt).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON, NaN/inf as null (:func:`json_safe`)."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf as ``None`` (strict JSON has neither; ``None`` marks "undefined"), tuples as lists, numpy
    scalars as Python numbers and keys as strings: the one conversion every JSON mollm writes goes through."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return json_safe(item())
    return obj


def append_jsonl(path: Path | str, rows: Iterable[Any]) -> None:
    """Append one JSON line per row without rewriting the file: each line is written whole and flushed, so an
    interrupted write can leave at most a truncated last line, which mollm's readers skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def temp_dir_beside(target: Path | str) -> Iterator[Path]:
    """A fresh temp folder next to ``target`` (same file system, so a rename is atomic); removed unless renamed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path | str, target: Path | str) -> Path:
    """Put the complete folder ``new`` at ``target``; an existing ``target`` is moved aside first and deleted only
    once ``new`` is in place (a crash in between leaves the old folder beside the new one, never neither)."""
    new, target = Path(new), Path(target)
    aside = None
    if target.exists():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Write a folder in a temp folder beside ``target``; on success it replaces ``target`` (:func:`replace_dir`),
    on failure it is removed and ``target`` is untouched."""
    with temp_dir_beside(target) as tmp:
        yield tmp
        replace_dir(tmp, target)
