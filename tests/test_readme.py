"""The README's Python examples run as written (with a tiny model standing in for the embedded one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mollm.models import loading
from mollm.models.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.fixture
def tiny_default_model(monkeypatch, tokenizer):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (tiny_model(), tokenizer))


def test_readme_step_example_runs(tiny_default_model):
    block = next(b for b in _python_blocks() if "MultiObjectiveStep" in b)
    ns: dict = {}
    exec(compile(block, "README.md (step example)", "exec"), ns)
    stats = ns["stats"]
    assert stats.finite and len(stats.coefficients) == 3
    # On a random tiny model UCE is saturated (p ~ 1/vocab): ds_mgda drops its vanishing gradient; retain improves.
    assert stats.decrease[2] > 0 and stats.coefficients[2] > 0


def test_readme_run_example_runs(tiny_default_model, monkeypatch, tmp_path, capsys):
    block = next(b for b in _python_blocks() if "mollm.unlearn(" in b)
    # Same calls, shorter and into a temporary folder: 24 steps of the shipped config become 2.
    assert '"steps=24"]' in block
    block = block.replace('"steps=24"]', f'"steps=2", "output_dir={tmp_path}/{{name}}", "evaluation.max_new_tokens=2"]')
    monkeypatch.chdir(REPO)  # the shipped config's data paths are relative to the repository root
    ns: dict = {}
    exec(compile(block, "README.md (run example)", "exec"), ns)
    assert ns["result"].status == "completed"
    assert (tmp_path / "mollm" / "model" / "model.safetensors").is_file()
    assert "completed" in capsys.readouterr().out


def test_readme_trainer_example_runs(tiny_default_model, tmp_path, capsys):
    block = next(b for b in _python_blocks() if "MultiObjectiveTrainer(" in b)
    # Same calls, shorter and into a temporary folder: 20 steps become 2, logged and saved at each.
    for old, new in [
        ('"runs/hf_trainer", max_steps=20', f'"{tmp_path}/hf", max_steps=2'),
        ("logging_steps=5, save_steps=10", "logging_steps=1, save_steps=1"),
    ]:
        assert old in block
        block = block.replace(old, new)
    ns: dict = {}
    exec(compile(block, "README.md (Trainer example)", "exec"), ns)
    trainer = ns["trainer"]
    assert trainer.state.global_step == 2 and len(trainer.step_records) == 2
    assert all("coefficients/retain" in h and "Gc/forget" in h for h in trainer.state.log_history if "loss" in h)
    assert (tmp_path / "hf" / "checkpoint-2" / "trainer_state.json").is_file()
    assert "'retain'" in capsys.readouterr().out
