"""The ``mollm`` command line, driven through typer's test runner on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from mollm.cli import app
from mollm.models.loading import save_model
from mollm.models.tiny import tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("m") / "tiny"
    save_model(tiny_model(), tokenizer, path)
    return path


@pytest.mark.parametrize(
    "command", ["unlearn", "finetune", "generate", "demo", "eval", "report", "compare", "geffect", "judge"]
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {f: 'facts:forget'}\nobjectives: [{loss: ga, data: f}]\nsteps: 1\nlearning_rate: 1\n")
    result = runner.invoke(app, ["unlearn", str(cfg)])
    assert result.exit_code == 2
    assert "learning_rate: unknown key" in result.output


def test_unknown_objective_is_a_clear_error(tmp_path, tiny_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_dir),
                "data": {"f": "facts:forget"},
                "steps": 1,
                "objectives": [{"loss": "gradient_ascent", "data": "f"}],
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    result = runner.invoke(app, ["unlearn", str(cfg)])
    assert result.exit_code == 2 and "gradient_ascent" in result.output


def test_unlearn_with_overrides_then_generate_and_eval(tmp_path, tiny_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_dir),
                "max_length": 48,
                "data": {"forget": "facts:forget#n_people=5", "retain": "facts:retain#n_people=5"},
                "objectives": [
                    {"loss": "ga", "data": "forget", "batch_size": 2},
                    {"loss": "nll", "data": "retain", "batch_size": 2},
                ],
                "steps": 5,
                "evaluation": {"before": False, "after": False},
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    result = runner.invoke(app, ["unlearn", str(cfg), "--set", "steps=2", "--set", "aggregator.name=upgrad"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["aggregator"]["name"] == "upgrad"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    prompts = tmp_path / "p.txt"
    prompts.write_text("Where was Ada born?\n\nWhat is 2+2?\n")
    out = tmp_path / "gen.jsonl"
    result = runner.invoke(
        app,
        ["generate", "--model", str(run_dir), "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "3"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Where was Ada born?", "What is 2+2?"]
    assert all(isinstance(r["response"], str) for r in rows)
    again = runner.invoke(app, ["generate", "--model", str(run_dir), "--prompts", str(prompts), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output  # never overwrites silently

    ecfg = tmp_path / "e.yaml"
    ecfg.write_text(
        yaml.safe_dump(
            {
                "model": str(run_dir),
                "reference": str(tiny_dir),
                "max_new_tokens": 3,
                "output_dir": str(tmp_path / "eval"),
                "suites": {"forget": {"data": "facts:forget#n_people=5", "limit": 3, "metrics": ["probability", "kl"]}},
            }
        )
    )
    result = runner.invoke(app, ["eval", str(ecfg)])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert 0 < res["suites"]["forget"]["probability"]["aggregate"]["value"] < 1
    assert res["suites"]["forget"]["kl"]["aggregate"]["value"] > 0  # the run moved away from the reference


def test_generate_reports_bad_prompt_file(tmp_path, tiny_dir):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    result = runner.invoke(
        app, ["generate", "--model", str(tiny_dir), "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2 and "p.jsonl:2" in result.output and "prompt" in result.output


def test_cli_import_stays_light():
    # `mollm --help` must not pay for torch / transformers (seconds); commands import them when they run.
    import subprocess
    import sys

    code = "import sys, mollm.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
