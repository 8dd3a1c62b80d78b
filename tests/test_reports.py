"""Run reports and run comparisons, on synthetic run directories."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from mollm.core.errors import DataError
from mollm.reports import compare_runs, lookup_metric, metric_direction, pareto_front, write_report
from mollm.reports._load import flatten_metrics, read_training_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _make_run(root: Path, name: str, after: dict | None, before: dict | None = None, steps: int = 6) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    if before is not None:
        (run / "eval" / "before.json").write_text(json.dumps(before))
    if after is not None:
        (run / "eval" / "after.json").write_text(json.dumps(after))
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "aggregator": {"name": "ds_mgda"},
                "optimizer": {"name": "adamw", "lr": 1e-5},
                "objectives": [{"name": "uce", "data": "forget.jsonl"}, {"name": "kl", "data": "retain.jsonl"}],
            }
        )
    )
    lines = []
    for s in range(steps):
        lines.append(
            json.dumps(
                {
                    "step": s,
                    "losses": {"uce": 1.0 / (s + 1), "kl": 0.01 * s},
                    "grad_norms": {"uce": 0.5 + s, "kl": 0.0 if s == 0 else 0.1 * s},  # KL grad is 0 at step 0
                    "cosines": {"uce|kl": -0.5 + 0.1 * s},
                    "coefficients": {"uce": 1.0, "kl": 0.5},
                    "conflict": s % 3 == 0,
                    "Gc": {"uce": 0.2, "kl": -0.1 if s % 3 == 0 else 0.1},
                }
            )
        )
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_flatten_metrics_flat_and_nested() -> None:
    data = {
        "harmful_rate": {"aggregate": 0.25, "items": [{"score": 1.0}]},
        "fluency": {"perplexity": {"aggregate": 12.5, "per_item": [1, 2]}, "entropy_2": 3.1},
        "nll": 2,
        "name": "ignored string",
        "converged": True,
    }
    assert flatten_metrics(data) == {
        "harmful_rate": 0.25,
        "fluency.perplexity": 12.5,
        "fluency.entropy_2": 3.1,
        "nll": 2.0,
        "converged": 1.0,
    }


def test_report_renders_from_synthetic_run(tmp_path: Path) -> None:
    run = _make_run(
        tmp_path,
        "run_a",
        after={"harmful_rate": {"aggregate": 0.1}, "fluency": {"perplexity": 20.0}},
        before={"harmful_rate": {"aggregate": 0.7}, "fluency": {"perplexity": 10.0}},
    )
    html_path = write_report(run)
    out = run / "report"
    assert html_path == out / "report.html"
    md = (out / "report.md").read_text()
    html = html_path.read_text()

    # Metric table: before, after and the difference, by hand.
    assert "| harmful_rate | 0.7 | 0.1 | -0.6 |" in md
    assert "| fluency.perplexity | 10 | 20 | 10 |" in md
    # Conflict probability: steps 0 and 3 of 6.
    assert "conflict probability 0.333" in md
    # Config summary.
    assert "| optimizer.lr | 1e-05 |" in md
    assert "| objectives.0.name | uce |" in md

    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["coefficients.png", "cosines.png", "gc.png", "grad_norms.png", "losses.png"]
    for name in pngs:
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert f"(plots/{name})" in md  # referenced from the Markdown
    # The HTML inlines the same images and needs no other file.
    inlined = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(inlined) == len(pngs)
    assert {base64.b64decode(x) for x in inlined} == {(out / "plots" / n).read_bytes() for n in pngs}
    assert 'src="plots/' not in html and "<link" not in html
    assert not list(out.rglob("*.tmp"))


def test_report_missing_parts_and_custom_out(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "eval").mkdir()
    (run / "eval" / "after.json").write_text(json.dumps({"nll": 2.5}))
    html_path = write_report(run, out=tmp_path / "elsewhere")
    md = (tmp_path / "elsewhere" / "report.md").read_text()
    assert html_path.is_file()
    assert "eval/before.json is missing" in md
    assert "| nll | — | 2.5 | — |" in md
    assert "No training metrics" in md and "No config.yaml" in md
    with pytest.raises(FileNotFoundError, match="not_a_run"):
        write_report(tmp_path / "not_a_run")


def test_training_log_errors_and_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "losses": {"ga": 1.0}}\n{"step": 1, "losses": {"ga": NaN}}\n{"step": 2, "los')
    log = read_training_log(path)
    assert log is not None and log.steps == [0.0, 1.0]
    assert log.losses["ga"][0] == 1.0 and math.isnan(log.losses["ga"][1])
    assert any("truncated last line" in w for w in log.warnings)
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_training_log(path)
    path.write_text('{"step": 0, "losses": [1, 2]}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:1: field 'losses' is list"):
        read_training_log(path)


def test_bad_eval_json_names_file(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "r", after=None)
    (run / "eval" / "after.json").write_text("{oops")
    with pytest.raises(DataError, match=r"after\.json: not valid JSON"):
        write_report(run)


# -------------------------------------------------------------------------------------------------------------- Pareto


def test_pareto_front_by_hand() -> None:
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.0, 3.0), (float("nan"), 0.0)]
    # (3,4) is dominated by (2,3); the duplicate (2,3) points do not dominate each other; NaN is never on the front.
    assert pareto_front(pts) == [True, True, False, True, True, False]
    # Minimising x, maximising y: (1,5) has the best x and the best y, so it dominates every other point.
    assert pareto_front(pts, minimize=(True, False)) == [True, False, False, False, False, False]
    # Maximising both: (4,1) has the best x, (1,5) the best y, (3,4) beats (2,3) in both.
    assert pareto_front(pts, minimize=(False, False)) == [True, False, True, True, False, False]
    assert pareto_front([]) == []


def test_metric_direction_and_lookup() -> None:
    assert metric_direction("harmful_rate") == "min"
    assert metric_direction("fluency.perplexity") == "min"
    assert metric_direction("tofu.forget_quality") == "max"
    assert metric_direction("tofu.model_utility") == "max"
    assert metric_direction("tofu.forget_rouge") == "min"
    m = {"forget.harmful_rate": 0.2, "unseen.harmful_rate": 0.3, "fluency.perplexity": 9.0}
    assert lookup_metric(m, "perplexity") == 9.0
    assert lookup_metric(m, "forget.harmful_rate") == 0.2
    assert lookup_metric(m, "missing") is None
    with pytest.raises(ValueError, match="ambiguous"):
        lookup_metric(m, "harmful_rate")


def test_compare_three_runs_marks_pareto_front(tmp_path: Path) -> None:
    # harmful rate (min) vs perplexity (min): "ga" has the lowest harm, "base" the lowest perplexity, "mollm" is in
    # between and non-dominated, "bad" is worse than "mollm" in both; "noeval" has no results.
    runs = [
        _make_run(tmp_path, "ga", after={"harmful_rate": 0.02, "fluency": {"perplexity": {"aggregate": 300.0}}}),
        _make_run(tmp_path, "mollm", after={"harmful_rate": 0.2, "fluency": {"perplexity": {"aggregate": 15.0}}}),
        _make_run(tmp_path, "base", after={"harmful_rate": 0.7, "fluency": {"perplexity": {"aggregate": 9.0}}}),
        _make_run(tmp_path, "bad", after={"harmful_rate": 0.3, "fluency": {"perplexity": {"aggregate": 40.0}}}),
        _make_run(tmp_path, "noeval", after=None),
    ]
    out = tmp_path / "cmp"
    html_path = compare_runs(runs, out, "harmful_rate", "perplexity")
    result = json.loads((out / "compare.json").read_text())
    front = {r["label"]: r["pareto"] for r in result["runs"]}
    assert front == {"ga": True, "mollm": True, "base": True, "bad": False, "noeval": False}
    assert result["x_direction"] == "min" and result["y_direction"] == "min"
    assert any("noeval" in n and "missing" in n for n in result["notes"])
    # Training-side conflict probability from metrics.jsonl is carried along (2 of 6 steps conflict).
    assert result["runs"][0]["metrics"]["training.conflict_probability"] == pytest.approx(1 / 3)

    md = (out / "compare.md").read_text()
    assert "| bad | 0.3 | 40 | no | after |" in md
    assert "| mollm | 0.2 | 15 | yes | after |" in md
    assert (out / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    assert "(pareto.png)" in md
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 1
    assert html.count('<tr class="front">') == 3

    # With perplexity maximised (a silly choice, but it checks the direction is honoured) "ga" dominates everything.
    compare_runs(runs[:4], out, "harmful_rate", "perplexity", y_direction="max")
    result = json.loads((out / "compare.json").read_text())
    assert [r["pareto"] for r in result["runs"]] == [True, False, False, False]


def test_compare_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no runs"):
        compare_runs([], tmp_path, "a", "b")
    with pytest.raises(FileNotFoundError, match="nope"):
        compare_runs([tmp_path / "nope"], tmp_path / "o", "a", "b")


def test_cli_report_and_compare(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from mollm.cli.report import compare_cmd, report_cmd

    app = typer.Typer()
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
    a = _make_run(tmp_path, "a", after={"harmful_rate": 0.1, "ppl": 30.0})
    b = _make_run(tmp_path, "b", after={"harmful_rate": 0.5, "ppl": 10.0})
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "reports")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "reports" / "a" / "report.html").is_file()
    assert (tmp_path / "reports" / "b" / "report.md").is_file()
    args = ["compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--x", "harmful_rate", "--y", "ppl"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert [r["pareto"] for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]] == [True, True]
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not found" in res.output
