"""End-to-end tests of the run loop on a tiny random model with generated and real data."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mollm.engine.config import ConfigError, load_config
from mollm.runs import RunError, run
from mollm.models.tiny import tiny_model

FACTS = "n_people=6,seed=1,forget_fraction=0.34"


def _config(tmp_path, **over):
    tree = {
        "name": "t",
        "output_dir": str(tmp_path / "{name}"),
        "max_length": 48,
        "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
        "objectives": [
            {"name": "forget", "loss": "uce", "data": "forget", "batch_size": 2},
            {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 2},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
        ],
        "aggregator": {"name": "ds_mgda"},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "steps": 4,
        "evaluation": {"max_new_tokens": 4},
    }
    tree.update(over)
    return load_config(tree)


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_run_writes_everything(tmp_path, tokenizer):
    # GA rather than UCE: on a random model p is ~1/vocab, where UCE is saturated and has almost no gradient.
    objectives = [
        {"name": "forget", "loss": "ga", "data": "forget", "batch_size": 2},
        {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 2},
        {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
    ]
    result = run(_config(tmp_path, objectives=objectives), model=tiny_model(), tokenizer=tokenizer, progress=False)
    d = result.run_dir
    assert result.status == "completed" and result.steps == 4
    resolved = yaml.safe_load((d / "config.yaml").read_text())
    assert resolved["seed"] == 0 and resolved["aggregator"]["name"] == "ds_mgda"  # defaults are written out
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert set(lines[0]["losses"]) == {"forget", "kl", "retain"}
    assert all(set(x) >= {"grad_norms", "cosines", "coefficients", "Gc", "conflict"} for x in lines)
    assert lines[0]["grad_norms"]["kl"] == pytest.approx(0.0, abs=1e-6)  # model == reference at step 1
    before, after = (json.loads((d / "eval" / f"{t}.json").read_text()) for t in ("before", "after"))
    assert after["forget/nll"] > before["forget/nll"]  # the forget answers became less likely...
    assert after["retain/nll"] < before["retain/nll"]  # ...while the retain answers became more likely
    assert not any(x["conflict"] for x in lines)  # ds_mgda: every objective decreases to first order
    assert any((d / "tensorboard").rglob("events.out.tfevents*"))
    assert (d / "model" / "config.json").is_file() and (d / "model" / "model.safetensors").is_file()
    assert json.loads((d / "run.json").read_text())["status"] == "completed"


def test_refuses_to_overwrite_existing_run(tmp_path, tokenizer):
    run(_config(tmp_path, steps=1), model=tiny_model(), tokenizer=tokenizer, progress=False)
    with pytest.raises(RunError, match="already exists"):
        run(_config(tmp_path, steps=1), model=tiny_model(), tokenizer=tokenizer, progress=False)
    result = run(_config(tmp_path, steps=1, overwrite=True), model=tiny_model(), tokenizer=tokenizer, progress=False)
    assert result.status == "completed"


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("aggregator", [{"name": "ds_mgda"}, {"name": "pcgrad", "options": {"seed": 3}}])
def test_interrupted_run_resumes_to_same_weights(tmp_path, tokenizer, aggregator, monkeypatch):
    from mollm.aggregators.pcgrad import PCGrad

    loaded = []
    real_load = PCGrad.load_state_dict
    monkeypatch.setattr(PCGrad, "load_state_dict", lambda self, state: (loaded.append(state), real_load(self, state)))
    # pcgrad draws a random order every step: its generator is checkpointed (aggregator.json) so the orders match.
    common = dict(
        steps=6,
        checkpoint_every=2,
        keep_checkpoints=1,
        aggregator=aggregator,
        evaluation={"before": False, "after": False},
    )
    full = run(_config(tmp_path / "a", **common), model=tiny_model(), tokenizer=tokenizer, progress=False)

    def stop_at_5(step, record):
        if step == 5:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run(
            _config(tmp_path / "b", **common),
            model=tiny_model(),
            tokenizer=tokenizer,
            progress=False,
            on_step=stop_at_5,
        )
    # The same original model is given again: it is the KL reference; the trained weights come from the checkpoint.
    resumed = run(
        _config(tmp_path / "b", resume=True, **common), model=tiny_model(), tokenizer=tokenizer, progress=False
    )
    assert resumed.steps == 6
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lines past the checkpoint were replaced, not duplicated
    assert [p.name for p in (resumed.run_dir / "checkpoints").iterdir()] == ["step_4"]  # only the newest is kept
    saved = resumed.run_dir / "checkpoints" / "step_4" / "aggregator.json"
    assert saved.is_file() == (aggregator["name"] == "pcgrad")
    if aggregator["name"] == "pcgrad":  # the resumed run read the generator state its checkpoint saved at step 4
        assert len(loaded) == 1 and loaded[0]["generator"] != PCGrad(seed=3).state_dict()["generator"]


def test_lora_run_merges_into_plain_model(tmp_path, tokenizer):
    from mollm.models.loading import load_model

    config = _config(tmp_path, lora={"r": 4, "alpha": 8, "merge": True}, steps=2, optimizer={"lr": 1e-2})
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    loaded, _ = load_model(result.model_dir)
    assert not hasattr(loaded, "peft_config")  # merged: a plain transformers model
    base = tiny_model()
    changed = any(
        not torch.equal(p, base.state_dict()[n]) for n, p in loaded.state_dict().items() if n in base.state_dict()
    )
    assert changed  # the adapter's update is in the merged weights


def test_real_data_run_tofu(tmp_path, tokenizer, shared_data):
    data = {
        "forget": f"tofu:{shared_data / 'tofu' / 'forget01.json'}",
        "retain": f"tofu:{shared_data / 'tofu' / 'retain99.json'}",
    }
    config = _config(
        tmp_path,
        data=data,
        max_length=96,
        steps=2,
        aggregator={"name": "mgda"},
        evaluation={"suites": {k: {"data": k, "limit": 2, "metrics": ["nll"]} for k in data}},
    )
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    assert result.status == "completed"
    assert {"forget/nll", "retain/nll"} <= set(result.evaluations["after"])


def test_nan_guard_skips_then_stops(tmp_path, tokenizer, monkeypatch):
    from mollm.objectives import nll

    monkeypatch.setattr(
        nll.NLL, "loss", lambda self, model, batch, reference=None: torch.tensor(float("nan"), requires_grad=True)
    )
    config = _config(tmp_path, steps=10, max_bad_steps=2, evaluation={"before": False, "after": False})
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(config, model=model, tokenizer=tokenizer, progress=False)
    assert result.status.startswith("stopped") and result.steps == 2
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(x["skipped"] for x in lines)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no update was applied


def test_evaluation_suites_before_and_after(tmp_path, tokenizer):
    suites = {"forget": {"data": f"facts:forget#{FACTS}", "limit": 2, "metrics": ["probability", "kl"]}}
    config = _config(tmp_path, steps=2, evaluation={"suites": suites})
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    before, after = result.evaluations["before"], result.evaluations["after"]
    assert before["forget/kl"] == pytest.approx(0.0, abs=1e-6)  # unchanged model: no divergence yet
    assert after["forget/kl"] > 0
    assert (result.run_dir / "eval" / "suites_after" / "results.json").is_file()


def test_stop_on_target(tmp_path, tokenizer):
    config = _config(
        tmp_path,
        steps=20,
        evaluation={"every": 2, "suites": {"forget": {"data": "forget", "limit": 2, "metrics": ["nll"]}}},
        stop={"metric": "forget/nll", "above": 0.0},
    )
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    assert result.steps == 2 and "forget/nll" in result.status


@pytest.mark.parametrize(
    "tree_change, message",
    [
        ({"optimiser": {"lr": 1}}, "optimiser: unknown key"),
        ({"objectives": [{"loss": "nll", "data": "nowhere"}]}, "objectives.0.data"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"steps": None}, "exactly one of 'steps' or 'epochs'"),
    ],
)
def test_bad_config_names_the_key(tmp_path, tree_change, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **tree_change)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {f: 'facts:forget'}\nobjectives: [{loss: ga, data: f}]\nsteps: 3\n")
    config = load_config(path, ["optimizer.lr=3e-5", "objectives.0.batch_size=2", "aggregator.name=mgda"])
    assert config.optimizer.lr == 3e-5 and config.objectives[0].batch_size == 2 and config.aggregator.name == "mgda"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["optimizer.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_shipped_configs_validate(tokenizer, monkeypatch):
    """Every shipped run config passes the whole pre-run check (data read, options, suites, every record encoded),
    from the repository root as its relative data paths expect; eval_* files are evaluation configs."""
    from pathlib import Path

    from mollm.evaluation.config import load_eval_config
    from mollm.runs import validate

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    paths = sorted((root / "configs").glob("*.yaml")) + sorted((root / "configs" / "harmful").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        if path.name.startswith("eval_"):
            load_eval_config(path)
        else:
            # The embedded tokenizer stands in for hub models (Llama-3), which cannot be fetched offline.
            validate(load_config(path), tokenizer=tokenizer)


def test_inline_record_missing_field_is_named(tmp_path, tokenizer):
    config = _config(tmp_path, data={"forget": [{"question": "q?"}], "retain": [{"question": "a?", "answer": "b"}]})
    with pytest.raises(ConfigError, match=r"\n  - data.forget.0.answer: expected a non-empty string"):
        run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    assert not config.run_dir.exists()  # checked before the run directory was made


def test_geffect_tracking_during_a_run(tmp_path, tokenizer):
    config = _config(
        tmp_path,
        steps=4,
        evaluation={"before": False, "after": False},
        geffect={"every": 2, "objectives": ["ga", "npo"], "batch_size": 2},
    )
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "geffect.jsonl").read_text().splitlines()]
    assert [(r["step"], r["objective"]) for r in rows] == [(2, "ga"), (2, "npo"), (4, "ga"), (4, "npo")]
    for r in rows:
        assert r["e_u"] < 0  # ascent on the forget batch raises forget NLL: negative unlearning G-effect
        assert r["e_r"] is not None
        assert sum(g["e_u"] for g in r["per_group"].values()) == pytest.approx(r["e_u"], rel=1e-4)
    with pytest.raises(ConfigError, match="geffect.retain: 'nope' is not a key of 'data'"):
        _config(tmp_path, geffect={"retain": "nope"})


def test_report_of_a_run_with_step_evaluations_and_geffects(tmp_path, tokenizer):
    from mollm.reports import write_report

    suites = {"forget": {"data": f"facts:forget#{FACTS}", "limit": 2, "metrics": ["probability"]}}
    config = _config(
        tmp_path,
        steps=4,
        evaluation={"every": 2, "suites": suites},
        geffect={"every": 2, "objectives": ["ga"], "batch_size": 2},
    )
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    step_2 = json.loads((result.run_dir / "eval" / "step_2.json").read_text())
    assert "forget/probability" in step_2  # suites run at every evaluation point, not only before/after
    html = write_report(result.run_dir).read_text()
    assert "Evaluation over steps" in html and "G-effects over steps" in html
    plots = result.run_dir / "report" / "plots"
    assert (plots / "geffect.png").stat().st_size > 1000
    assert (plots / "eval_probability.png").stat().st_size > 1000
    assert html.count("data:image/png;base64,") >= 7  # 5 training plots + evaluation + G-effect, all inlined


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_checkpoints_load_as_models_and_feed_geffect_cli(tmp_path, tokenizer, lora):
    from typer.testing import CliRunner

    from mollm.cli import app
    from mollm.engine.checkpoints import load_model_or_checkpoint as load_model

    base = tmp_path / "tiny"
    tiny_model().save_pretrained(base)
    tokenizer.save_pretrained(base)
    common = dict(
        model=str(base),
        lora=lora,
        checkpoint_every=2,
        keep_checkpoints=None,
        evaluation={"before": False, "after": False},
    )
    long = run(_config(tmp_path / "long", steps=6, **common), progress=False)
    short = run(_config(tmp_path / "short", steps=2, **common), progress=False)
    ckpt, _ = load_model(long.run_dir / "checkpoints" / "step_2")
    final, _ = load_model(short.model_dir)
    if lora:
        ckpt = ckpt.merge_and_unload()
    expected = final.state_dict()
    for k, v in ckpt.state_dict().items():  # the checkpoint at step 2 is the 2-step run's model
        torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-6)

    out = tmp_path / "ge"
    res = CliRunner().invoke(
        app,
        [
            "geffect",
            "--model",
            str(long.run_dir),
            "--forget",
            f"facts:forget#{FACTS}",
            "--objectives",
            "ga",
            "--n-forget",
            "2",
            "--max-length",
            "32",
            "--no-per-sample",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "geffect.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [2, 4]  # the run's checkpoints, in order


def test_adamw_is_the_fused_kernel_on_cpu_and_fused_false_is_torchs_default(tmp_path, tokenizer):
    """The engine's AdamW: fused where torch has it (several times faster on CPU than the per-weight loop; the
    Trainer's default on torch >= 2.8); ``optimizer.fused: false`` gives torch's own choice; the same weights up to
    rounding."""
    from mollm.engine.run import _optimizer

    params = list(tiny_model().parameters())
    plain = {"before": False, "after": False}
    fused = _config(tmp_path, name="fused", evaluation=plain)
    off = {"name": "adamw", "lr": 1e-3, "fused": False}
    unfused = _config(tmp_path, name="unfused", evaluation=plain, optimizer=off)
    assert fused.optimizer.fused is None and _optimizer(params, fused).defaults["fused"] is True
    assert not _optimizer(params, unfused).defaults["fused"]
    a = run(fused, model=tiny_model(), tokenizer=tokenizer, progress=False)
    b = run(unfused, model=tiny_model(), tokenizer=tokenizer, progress=False)
    wa, wb, w0 = _weights(a.run_dir), _weights(b.run_dir), tiny_model().state_dict()
    moved = max((wa[k] - w0[k]).abs().max().item() for k in wa)
    assert moved > 1e-3
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff < 1e-5  # rounding only (1.7e-6 measured, while the 4 steps move weights by 4e-3)


def test_a_stalled_direction_is_warned_about(tmp_path, tokenizer, caplog):
    # At step 1 the model is its reference, so KL's gradient is 0 and `mgda`'s min-norm point is the zero vector.
    objectives = [
        {"name": "forget", "loss": "ga", "data": "forget", "batch_size": 2},
        {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 2},
        {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
    ]
    stalled = "the aggregated direction is ~0"
    for aggregator, warned in (("mgda", True), ("ds_mgda", False)):
        caplog.clear()
        config = _config(tmp_path, name=aggregator, steps=1, objectives=objectives, aggregator={"name": aggregator})
        with caplog.at_level("WARNING", logger="mollm"):
            run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
        assert any(stalled in r.getMessage() and "step 1" in r.getMessage() for r in caplog.records) is warned
