"""The one write policy: files replaced whole, folders swapped in with the old one deleted last, JSON-Lines logs
appended without rewriting, JSON values made strict (NaN/inf -> null)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mollm.core.atomic import append_jsonl, atomic_directory, atomic_write_json, json_safe, replace_dir
from mollm.core.errors import DataError
from mollm.engine.metrics_log import read_metrics, truncate_metrics


def test_json_safe_makes_strict_json():
    got = json_safe({"a": math.nan, 1: (np.float32(1.5), math.inf), "b": [np.int64(3), None, True]})
    assert got == {"a": None, "1": [1.5, None], "b": [3, None, True]}
    assert isinstance(got["1"][0], float) and isinstance(got["b"][0], int)


def test_atomic_write_json_writes_nan_as_null(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"v": float("nan")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": None}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left


def test_append_jsonl_appends_without_rewriting(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"step": 1}])
    inode, first = os.stat(path).st_ino, path.read_bytes()
    append_jsonl(path, [{"step": 2, "x": math.nan}, {"step": 3}])
    assert os.stat(path).st_ino == inode  # the same file, extended: never replaced
    assert path.read_bytes().startswith(first)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"step": 1}, {"step": 2, "x": None}, {"step": 3}]


def test_metrics_reader_skips_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "los')
    rows, warnings = read_metrics(tmp_path)
    assert [r["step"] for _, r in rows] == [1, 2] and "truncated last line" in warnings[0]
    path.write_text('{"step": 1}\n{"step": 2, "los\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "los')
    truncate_metrics(path, after_step=1)  # resume from step 1: later lines and the torn one go
    assert path.read_text() == '{"step": 1}\n'


def test_replace_dir_deletes_the_old_folder_last(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched while the new one is written
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # a failed write leaves the old folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    new = tmp_path / "fresh"
    new.mkdir()
    replace_dir(new, tmp_path / "absent")
    assert (tmp_path / "absent").is_dir() and not new.exists()
