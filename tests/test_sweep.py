"""`mollm sweep`: a grid of ordinary runs under one folder, skipped when finished, resumed when not, one failure
reported without stopping the others, a sweep table and a Pareto plot."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from mollm.cli import app
from mollm.core.errors import ConfigError
from mollm.models.tiny import tiny_model
from mollm.runs import run
from mollm.sweep import parse_grid, run_sweep

FACTS = "n_people=6,seed=1,forget_fraction=0.34"


@pytest.fixture
def base(tmp_path, tokenizer):
    path = tmp_path / "tiny"
    tiny_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _tree(tmp_path, base, **over):
    tree = {
        "name": "s",
        "model": str(base),
        "max_length": 48,
        "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
        "objectives": [
            {"name": "forget", "loss": "ga", "data": "forget", "batch_size": 2},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
        ],
        "aggregator": {"name": "ds_mgda"},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "steps": 3,
        "checkpoint_every": 1,
        "evaluation": {
            "before": False,
            "suites": {k: {"data": k, "limit": 4, "metrics": ["nll"]} for k in ("forget", "retain")},
        },
        "sweep": {
            "grid": {"aggregator.options.preference": [[1, 1], [4, 1]]},
            "output_dir": str(tmp_path / "sweeps" / "{name}"),
            "x": "forget/nll",
            "y": "retain/nll",
        },
    }
    tree.update(over)
    return tree


def test_parse_grid_reads_yaml_values():
    assert parse_grid(["optimizer.lr=1e-5,3e-5", "aggregator.options.preference=[1,1],[2,1]", "seed=0,1"]) == {
        "optimizer.lr": [1e-5, 3e-5],
        "aggregator.options.preference": [[1, 1], [2, 1]],
        "seed": [0, 1],
    }
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid(["optimizer.lr"])


def test_a_sweep_runs_every_point_writes_its_table_and_skips_finished_points(tmp_path, base):
    result = run_sweep(_tree(tmp_path, base), grid={"optimizer.lr": [1e-3, 3e-3]}, progress=False)
    sweep_dir = tmp_path / "sweeps" / "s"
    assert result.sweep_dir == sweep_dir and len(result.rows) == 4
    assert all(r["status"] == "completed" for r in result.rows)
    runs = sorted(p.name for p in (sweep_dir / "runs").iterdir())
    assert runs == [r["run"] for r in result.rows] and runs[0].startswith("p00_preference=1-1_lr=0.001")
    for r in result.rows:  # ordinary run directories, each with its own point's config
        cfg = yaml.safe_load((sweep_dir / "runs" / r["run"] / "config.yaml").read_text())
        assert cfg["aggregator"]["options"]["preference"] == r["aggregator.options.preference"]
        assert cfg["optimizer"]["lr"] == r["optimizer.lr"]
    with (sweep_dir / "sweep.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and {"forget/nll", "retain/nll", "pareto", "status"} <= set(table[0])
    assert all(float(row["forget/nll"]) > 0 for row in table)
    compared = json.loads((sweep_dir / "compare.json").read_text())
    assert compared["x_metric"] == "forget/nll" and any(r["pareto"] for r in compared["runs"])
    assert (sweep_dir / "pareto.png").stat().st_size > 1000 and (sweep_dir / "sweep.md").is_file()
    # More weight on forgetting moves the trade-off: the forget NLL rises more with preference [4, 1].
    nll = {(json.dumps(r["aggregator.options.preference"]), r["optimizer.lr"]): r["metrics"]["forget/nll"] for r in result.rows}
    assert nll[("[4, 1]", 1e-3)] > nll[("[1, 1]", 1e-3)]

    model = sweep_dir / "runs" / runs[0] / "model" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    again = run_sweep(_tree(tmp_path, base), grid={"optimizer.lr": [1e-3, 3e-3]}, progress=False)
    assert all(r["status"].startswith("done (skipped") for r in again.rows)
    assert model.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"point p00_.*was run with other values of steps; use another output_dir"):
        run_sweep(_tree(tmp_path, base, steps=4), grid={"optimizer.lr": [1e-3, 3e-3]}, progress=False)
    over = run_sweep(_tree(tmp_path, base, steps=4), grid={"optimizer.lr": [1e-3]}, overwrite=True, progress=False)
    assert [r["status"] for r in over.rows] == ["completed", "completed"]
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == [r["run"] for r in over.rows]  # old sweep gone
    assert sorted(p.name for p in sweep_dir.parent.iterdir()) == ["s"]


class _Stop(Exception):
    pass


def test_a_failed_point_is_reported_and_an_unfinished_one_resumes_to_the_same_weights(tmp_path, base):
    calls = {"n": 0}

    def flaky(config, progress=True):
        calls["n"] += 1
        if config.name.startswith("p01") and not config.resume:  # interrupted after its second step

            def stop(step, record):
                if step == 2:
                    raise _Stop("power cut")

            return run(config, progress=False, on_step=stop)
        return run(config, progress=False)

    first = run_sweep(_tree(tmp_path, base), run=flaky, progress=False)
    assert [r["status"].split(":")[0] for r in first.rows] == ["completed", "failed"]
    assert "power cut" in first.rows[1]["status"] and len(first.failed) == 1
    second = run_sweep(_tree(tmp_path, base), run=flaky, progress=False)
    assert [r["status"].split(" ")[0] for r in second.rows] == ["done", "completed"]  # resumed from step 2
    resumed = load_file(str(tmp_path / "sweeps" / "s" / "runs" / second.rows[1]["run"] / "model" / "model.safetensors"))
    straight = run_sweep(_tree(tmp_path, base), output_dir=tmp_path / "straight", progress=False)
    whole = load_file(str(tmp_path / "straight" / "runs" / straight.rows[1]["run"] / "model" / "model.safetensors"))
    for k, v in whole.items():
        assert (v - resumed[k]).abs().max() <= 1e-6, k
    lines = (tmp_path / "sweeps" / "s" / "runs" / second.rows[1]["run"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_every_point_is_checked_before_anything_runs(tmp_path, base):
    with pytest.raises(ConfigError, match=r"point p01_preference=1-1_lr=-1\): invalid configuration\n  optimizer.lr: Input should be greater than 0"):
        run_sweep(_tree(tmp_path, base), grid={"optimizer.lr": [1e-3, -1]}, progress=False)
    tree = _tree(tmp_path, base)
    tree["sweep"]["grid"]["objectives.0.options"] = [{"beta": 1}]  # ga has no options: every point is bad
    with pytest.raises(ConfigError, match=r"the sweep has problems; nothing was run(.|\n)*option 'beta'"):
        run_sweep(tree, progress=False)
    assert not (tmp_path / "sweeps").exists()


def test_the_cli(tmp_path, base):
    path = tmp_path / "c.yaml"
    tree = _tree(tmp_path, base, steps=1)
    tree["sweep"]["grid"] = {}
    tree["sweep"]["x"] = "nll"  # ambiguous (forget/nll, retain/nll): the table is still written, with a note
    path.write_text(yaml.safe_dump(tree))
    got = CliRunner().invoke(app, ["sweep", str(path), "--grid", "optimizer.lr=1e-3,2e-3", "--set", "seed=3"])
    assert got.exit_code == 0, got.output
    assert "p00_lr=0.001: completed" in got.output and "p01_lr=0.002: completed" in got.output
    cfg = yaml.safe_load((tmp_path / "sweeps" / "s" / "runs" / "p00_lr=0.001" / "config.yaml").read_text())
    assert cfg["seed"] == 3
    sweep_md = (tmp_path / "sweeps" / "s" / "sweep.md").read_text()
    assert "p01_lr=0.002" in sweep_md and "No Pareto plot: metric 'nll' is ambiguous" in sweep_md
