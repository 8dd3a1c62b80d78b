"""The package's layers (data -> models -> objectives -> aggregators -> engine -> evaluation | geffect -> runs |
reports | integrations -> demo -> cli, all above mollm.core) hold: import-linter checks the contract in
pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(src: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_the_layer_contract_holds():
    got = _lint(ROOT / "src")
    assert got.returncode == 0, got.stdout + got.stderr
    assert "1 kept, 0 broken" in got.stdout


def test_an_import_against_the_layers_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "mollm", tmp_path / "mollm", ignore=shutil.ignore_patterns("__pycache__"))
    records = tmp_path / "mollm" / "data" / "records.py"
    records.write_text(records.read_text() + "\n\ndef _late():\n    from mollm.engine import run  # noqa: F401\n")
    got = _lint(tmp_path)
    assert got.returncode != 0
    assert "mollm.data.records -> mollm.engine.run" in got.stdout
