"""Nothing is touched until a whole run is known to be valid, and nothing the user had is lost.

A run (or an evaluation, or a G-effect output) is checked first — every problem in one error — before a directory is
created or deleted and before a weight is loaded; a start that fails leaves no directory behind; ``overwrite`` moves
the old run aside and deletes it only once the new one has written its first step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import mollm.models.loading as loading
from mollm.cli import app
from mollm.core.errors import ConfigError
from mollm.core.outputs import OutputExistsError, claim_output
from mollm.engine.config import load_config
from mollm.models.tiny import tiny_model
from mollm.runs import RunError, run

FACTS = "n_people=6,seed=1,forget_fraction=0.34"


@pytest.fixture
def base(tmp_path, tokenizer):
    """A tiny model saved as a folder, so configs name it like a user's model (and loading it can be watched)."""
    path = tmp_path / "tiny"
    tiny_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model weights are loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the configuration was known to be valid")

    monkeypatch.setattr(loading, "load_model", refuse)


def _tree(tmp_path, base, **over):
    tree = {
        "name": "r",
        "model": str(base),
        "output_dir": str(tmp_path / "runs" / "{name}"),
        "max_length": 48,
        "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
        "objectives": [
            {"name": "forget", "loss": "uce", "data": "forget", "batch_size": 2, "options": {"eps": 0.5}},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
        ],
        "aggregator": {"name": "ds_mgda"},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "steps": 2,
        "evaluation": {"before": False, "after": False},
    }
    tree.update(over)
    return tree


def _bad_jsonl(tmp_path) -> Path:
    path = tmp_path / "forget.jsonl"
    path.write_text('{"question": "q1?", "answer": "a1"}\n{"question": "q2?", "answer": \n')
    return path


def test_every_problem_is_listed_before_anything_is_touched(tmp_path, base, no_weights):
    tree = _tree(tmp_path, base)
    tree["objectives"][0]["options"] = {"epz": 0.5}  # typo
    tree["data"]["extra"] = str(_bad_jsonl(tmp_path))  # malformed line 2
    tree["aggregator"] = {"name": "ds_mgda", "options": {"preference": [1.0, 2.0, 3.0]}}  # 3 values, 2 objectives
    tree["evaluation"] = {
        "before": False,
        "after": False,
        "suites": {"s": {"data": f"facts:forget#{FACTS}", "metrics": ["rogue_l", {"name": "nll", "knd": 1}]}},
    }
    config = load_config(tree)
    with pytest.raises(ConfigError) as info:
        run(config, progress=False)
    msg = str(info.value)
    assert "5 problem(s); nothing was written or loaded" in msg
    assert "objectives.0 (forget): objective 'uce': option 'epz': unknown option (its options: eps)" in msg
    assert "data.extra:" in msg and "forget.jsonl:2: not valid JSON" in msg
    assert "aggregator: option 'preference' has 3 values but there are 2 objectives" in msg
    assert "unknown metric 'rogue_l'" in msg and "metric 'nll': option 'knd': unknown option" in msg
    assert not (tmp_path / "runs").exists()


def test_answers_cut_away_by_truncation_are_found_first(tmp_path, base, no_weights):
    config = load_config(_tree(tmp_path, base, max_length=9))
    with pytest.raises(ConfigError, match=r"objectives.0 \(forget\): .*leaves no answer token after truncation"):
        run(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_model_spec_that_names_nothing_is_a_problem_too(tmp_path, base, no_weights):
    tree = _tree(tmp_path, base, model=str(tmp_path / "no_such_model"))
    tree["objectives"][0]["options"] = {"epz": 0.5}
    with pytest.raises(ConfigError, match=r"2 problem\(s\)(.|\n)*model: (.|\n)*does not exist(.|\n)*'epz'"):
        run(load_config(tree), progress=False)
    assert not (tmp_path / "runs").exists()


def test_typo_then_fix_then_rerun_without_overwrite(tmp_path, base):
    tree = _tree(tmp_path, base)
    tree["objectives"][0]["options"] = {"epz": 0.5}
    with pytest.raises(ConfigError, match="epz"):
        run(load_config(tree), progress=False)
    tree["objectives"][0]["options"] = {"eps": 0.5}  # the fix; no overwrite needed, since nothing was left behind
    result = run(load_config(tree), progress=False)
    assert result.status == "completed" and (result.run_dir / "model" / "config.json").is_file()


def test_the_cli_lists_the_problems_and_leaves_no_directory(tmp_path, base):
    tree = _tree(tmp_path, base)
    tree["objectives"][0]["options"] = {"epz": 0.5}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    for command in ("unlearn", "finetune"):
        got = CliRunner().invoke(app, [command, str(path)])
        assert got.exit_code == 2, got.output
        assert "option 'epz': unknown option" in got.output
        assert not (tmp_path / "runs").exists()


def _finished(tmp_path, base) -> Path:
    result = run(load_config(_tree(tmp_path, base)), progress=False)
    return result.run_dir


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_with_an_invalid_config_keeps_the_old_run(tmp_path, base):
    old = _finished(tmp_path, base)
    before = _snapshot(old)
    tree = _tree(tmp_path, base, overwrite=True)
    tree["objectives"][0]["options"] = {"epz": 0.5}
    with pytest.raises(ConfigError):
        run(load_config(tree), progress=False)
    assert _snapshot(old) == before
    assert sorted(p.name for p in old.parent.iterdir()) == ["r"]  # nothing moved aside or left over


def test_overwrite_keeps_the_old_run_aside_until_the_first_step_then_deletes_it(tmp_path, base):
    old = _finished(tmp_path, base)
    marker = old / "metrics.jsonl"
    old_first_line = marker.read_text().splitlines()[0]
    seen = []

    def on_step(step, record):
        aside = [p for p in old.parent.iterdir() if p.name.startswith(".r.replaced-")]
        seen.append((step, len(aside)))

    result = run(load_config(_tree(tmp_path, base, overwrite=True, steps=3, seed=1)), progress=False, on_step=on_step)
    assert result.status == "completed"
    assert seen == [(1, 0), (2, 0), (3, 0)]  # gone once step 1 was written
    assert sorted(p.name for p in old.parent.iterdir()) == ["r"]
    assert json.loads(marker.read_text().splitlines()[0])["step"] == 1
    assert marker.read_text().splitlines()[0] != old_first_line  # the new run's log (another seed)


def test_a_start_that_fails_after_validation_restores_the_old_run(tmp_path, base, monkeypatch):
    old = _finished(tmp_path, base)
    before = _snapshot(old)
    seen_aside = []

    def broken(*args, **kwargs):  # the weights fail to load, after the run directory was claimed
        seen_aside.extend(p.name for p in old.parent.iterdir() if p.name.startswith(".r.replaced-"))
        raise OSError("disk error while reading weights")

    monkeypatch.setattr(loading, "load_model", broken)
    with pytest.raises(OSError, match="disk error"):
        run(load_config(_tree(tmp_path, base, overwrite=True)), progress=False)
    assert len(seen_aside) == 1  # the old run was moved aside, not deleted...
    assert _snapshot(old) == before  # ...and put back when the new start failed
    assert sorted(p.name for p in old.parent.iterdir()) == ["r"]


def test_a_fresh_start_that_fails_leaves_no_directory(tmp_path, base, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk error while reading weights")

    monkeypatch.setattr(loading, "load_model", broken)
    with pytest.raises(OSError):
        run(load_config(_tree(tmp_path, base)), progress=False)
    assert not (tmp_path / "runs" / "r").exists()


def test_without_overwrite_an_existing_run_is_refused_and_kept(tmp_path, base):
    old = _finished(tmp_path, base)
    before = _snapshot(old)
    with pytest.raises(RunError, match="already exists; pass overwrite=true"):
        run(load_config(_tree(tmp_path, base)), progress=False)
    assert _snapshot(old) == before


def test_claim_output_semantics(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        claim_output(out, overwrite=False)
    with pytest.raises(RuntimeError):  # fails before started(): the old folder comes back
        with claim_output(out, overwrite=True) as claim:
            (out / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with pytest.raises(RuntimeError):  # fails after started(): the new output stays, the old one is gone
        with claim_output(out, overwrite=True) as claim:
            (out / "new.txt").write_text("new")
            claim.started()
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_eval_checks_suites_and_model_before_loading_or_writing(tmp_path, base, no_weights):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(tmp_path / "missing_model"),
                "output_dir": str(tmp_path / "eval_out"),
                "suites": {
                    "a": {"data": str(_bad_jsonl(tmp_path)), "metrics": ["nll"]},
                    "b": {"data": f"facts:forget#{FACTS}", "metrics": [{"name": "mia", "holdout": "nope"}]},
                    "c": {"data": f"facts:forget#{FACTS}", "metrics": [{"name": "harmful_rate", "judge": "./no_judge"}]},
                },
            }
        )
    )
    got = CliRunner().invoke(app, ["eval", str(cfg)])
    assert got.exit_code == 2, got.output
    for expected in ("4 problem(s)", "forget.jsonl:2: not valid JSON", "holdout='nope' is not a suite", "no_judge", "model: "):
        assert expected in got.output, expected
    assert not (tmp_path / "eval_out").exists()


def test_geffect_refuses_an_existing_output_before_computing(tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    (out / "geffect.json").write_text("{}")
    got = CliRunner().invoke(app, ["geffect", "--forget", f"facts:forget#{FACTS}", "--out", str(out)])
    assert got.exit_code == 2 and "already exists; pass --overwrite" in got.output
    assert (out / "geffect.json").read_text() == "{}"
