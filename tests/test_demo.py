"""The built-in demo (``mollm demo``): its configs, its story checks, the measured result, and the whole pipeline on a
tiny model (``--quick``; the real demo takes minutes and is measured by ``bench/demo_time.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mollm import demo
from mollm.engine.config import load_config
from mollm.models import loading
from mollm.models.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
STAGES = ["original", "fine-tuned (target)", "unlearned (MOLLM)"]
METRICS = ["forget_acc", "forget_prob", "retain_acc", "retain_prob", "normal_ppl"]


def test_general_knowledge_is_evaluated_on_questions_no_stage_trains_on(tmp_path):
    trained = {r["question"] for r in demo.GENERAL_QA}
    evaluated = {r["question"] for r in demo.NORMAL_QA}
    assert trained and evaluated and not trained & evaluated
    ft = load_config(demo.finetune_config(tmp_path))
    ul = load_config(demo.unlearn_config(tmp_path, tmp_path / "target"))
    for cfg in (ft, ul):
        assert cfg.evaluation_suites()["normal"]["data"] == "normal"
        assert all(o.data != "normal" for o in cfg.objectives)


def test_finetune_keeps_the_original_close_on_general_questions(tmp_path):
    cfg = load_config(demo.finetune_config(tmp_path))
    assert cfg.mode == "finetune" and cfg.model == "embedded"
    assert [(o.loss, o.data) for o in cfg.objectives] == [("nll", "all_facts"), ("kl", "general")]
    assert cfg.data["general"] == demo.GENERAL_QA
    quick = load_config(demo.finetune_config(tmp_path, quick=True))
    assert quick.epochs < cfg.epochs


def _table(target_ppl=7.0, unlearned_ppl=7.0, forget_after=0.0, retain_after=1.0):
    row = dict.fromkeys(METRICS, 0.5)
    return {
        "original": {**row, "forget_acc": 0.0, "retain_acc": 0.0, "normal_ppl": 11.0},
        "fine-tuned (target)": {**row, "forget_acc": 1.0, "retain_acc": 1.0, "normal_ppl": target_ppl},
        "unlearned (MOLLM)": {
            **row,
            "forget_acc": forget_after,
            "retain_acc": retain_after,
            "normal_ppl": unlearned_ppl,
        },
    }


def test_story_checks_each_claim():
    assert all(demo.story(_table()).values())
    # The demo before issue #11: the target's general-knowledge perplexity went from 11 to 180.
    broken = demo.story(_table(target_ppl=180.0, unlearned_ppl=28.0))
    assert not broken["target_ppl_kept"] and not broken["unlearned_ppl_kept"] and broken["forget_acc_fell"]
    assert not demo.story(_table(forget_after=0.8))["forget_acc_fell"]
    assert not demo.story(_table(retain_after=0.5))["retain_acc_kept"]
    assert demo.story(_table(target_ppl=11.0 * demo.PPL_FACTOR))["target_ppl_kept"]
    no_accuracy = _table()
    no_accuracy["unlearned (MOLLM)"]["forget_acc"] = None  # accuracy not evaluated: nothing to claim
    assert not demo.story(no_accuracy)["forget_acc_fell"]


def test_measured_demo_tells_the_story():
    """``bench/results/demo.json`` (what the README quotes) is a full demo run whose table passes every check."""
    result = json.loads((REPO / "bench" / "results" / "demo.json").read_text())
    assert list(result["table"]) == STAGES
    assert all(set(result["table"][s]) == set(METRICS) for s in STAGES)
    checks = demo.story(result["table"])
    assert all(checks.values()), checks
    assert result["story"] == checks


def test_quick_demo_on_a_tiny_model(tmp_path, monkeypatch, tokenizer, capsys):
    real_load = loading.load_model

    def load(spec=None, **kwargs):  # the embedded model becomes a tiny random one; saved targets load as usual
        return (tiny_model(), tokenizer) if spec == "embedded" else real_load(spec, **kwargs)

    monkeypatch.setattr(loading, "load_model", load)
    out = tmp_path / "demo"
    summary = demo.run_demo(out, quick=True, progress=False)

    saved = json.loads((out / "demo.json").read_text())
    assert saved == summary
    assert list(saved["table"]) == STAGES
    for stage in STAGES:
        assert all(isinstance(saved["table"][stage][m], float) for m in METRICS)  # measured, every cell
    # the table comes from the runs' own evaluations
    ft_before = json.loads((out / "finetune" / "eval" / "before.json").read_text())
    ul_after = json.loads((out / "unlearn" / "eval" / "after.json").read_text())
    assert saved["table"]["original"]["normal_ppl"] == ft_before["normal/nll.perplexity"]
    assert saved["table"]["unlearned (MOLLM)"]["forget_acc"] == ul_after["forget/accuracy"]
    assert saved["story"] == demo.story(saved["table"])
    assert Path(saved["report"]).is_file()
    md = (out / "demo.md").read_text()
    assert "| general-knowledge answer perplexity |" in md and "target_ppl_kept" in md
    assert "general-knowledge answer perplexity" in capsys.readouterr().out

    with pytest.raises(FileExistsError, match="--overwrite"):
        demo.run_demo(out, quick=True, progress=False)
    assert json.loads((out / "demo.json").read_text()) == saved  # refused: the old demo is untouched
