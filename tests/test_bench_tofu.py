"""bench/tofu.py: every run is valid, the subset is the documented one (forget, retain and holdout authors apart),
and the selection rule and the report do what bench/README.md says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mollm.data import load_dataset_spec
from mollm.engine.config import load_config
from mollm.evaluation.evaluate import check_suites
from mollm.runs import validate

_PATH = Path(__file__).resolve().parents[1] / "bench" / "tofu.py"
_spec = importlib.util.spec_from_file_location("bench_tofu", _PATH)
tofu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tofu)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tofu_work")
    tofu.build_subset(folder)
    return folder


def _records(path: Path) -> list:
    return load_dataset_spec(f"tofu:{path}")


@pytest.mark.parametrize("method", list(tofu.METHODS))
def test_every_method_is_a_valid_run(method: str, work: Path) -> None:
    tree = tofu.run_tree(method, 3e-5, 0, work, model="embedded")  # the target does not exist yet
    config = load_config(tree)
    validate(config)  # data, options, truncation at max_length, ...: raises on any problem
    assert config.steps == tofu.STEPS and config.format.kind == "plain"
    assert config.objectives[0].label == "forget"  # the log summary reads the forget gradient norm
    assert tofu.run_tree(method, 3e-5, 0, work)["model"] == str(tofu.target_dir(work))
    assert not (work / "runs").exists()  # validation writes nothing


def test_target_and_retain_model_share_one_recipe(work: Path) -> None:
    trees = {which: tofu.finetune_tree(which, work) for which in ("target", "retain")}
    for tree in trees.values():
        validate(load_config(tree))
    strip = ("name", "data", "objectives")
    assert {k: v for k, v in trees["target"].items() if k not in strip} == {
        k: v for k, v in trees["retain"].items() if k not in strip}
    assert [o["data"] for o in trees["target"]["objectives"]] == ["all"]
    assert [o["data"] for o in trees["retain"]["objectives"]] == ["retain"]
    assert "forget" not in json.dumps(trees["retain"]["data"])  # the retain model never sees the forget authors


def test_the_subset_is_the_documented_one(work: Path) -> None:
    paths = tofu.subset_paths(work)
    parts = {k: _records(p) for k, p in paths.items()}
    assert {k: len(v) for k, v in parts.items()} == {"forget": 80, "retain": 720, "all": 800, "holdout": 80,
                                                     "retain_eval": 40}
    qa = {k: [(r.question, r.answer) for r in v] for k, v in parts.items()}
    assert qa["all"] == qa["forget"] + qa["retain"]
    assert not set(qa["holdout"]) & set(qa["all"])
    assert set(qa["retain_eval"]) <= set(qa["retain"])  # retain utility is measured on trained authors
    assert all(r.extra.get("perturbed_answer") and r.extra.get("paraphrased_answer")
               for k in ("forget", "retain_eval") for r in parts[k])
    # 20 items per author, in author order; every forget / holdout author named in all their items and nowhere else.
    described = tofu.describe_subset()
    names = {"forget": described["forget"]["names"], "holdout": described["holdout"]["names"]}
    assert len(set(names["forget"] + names["holdout"])) == 8
    texts = {k: [r.question + " " + r.answer for r in v] for k, v in parts.items()}
    for part, part_names in names.items():
        for i, name in enumerate(part_names):
            block = texts[part][20 * i: 20 * (i + 1)]
            assert all(name in t for t in block), name
            others = [t for k in ("forget", "retain", "holdout") for t in texts[k] if not (k == part and t in block)]
            assert not any(name in t for t in others), name
    # the shared files' layout the subset relies on: forget01 = the last 2 forget10 authors, so it is in the forget set
    forget01 = _records(tofu.TOFU / "forget01.json")
    assert {(r.question, r.answer) for r in forget01} <= set(qa["forget"])


def test_subset_files_are_rewritten_only_when_they_change(work: Path) -> None:
    path = tofu.subset_paths(work)["forget"]
    before = path.stat().st_mtime_ns
    tofu.build_subset(work)
    assert path.stat().st_mtime_ns == before  # the evaluation cache keys on file stats


def test_suites_are_valid(work: Path) -> None:
    suites = tofu.suites(work)
    assert check_suites(suites) == []
    forget = suites["forget"]["metrics"]
    ref = str(tofu.reference_path(work))
    assert {"name": "forget_quality", "reference": ref, "reference_suite": "forget"} in forget
    assert {"name": "mia", "holdout": "holdout", "retain_auc": ref, "retain_suite": "forget"} in forget
    assert set(suites) >= {"retain", "real_authors", "world_facts"}  # what TOFU's model utility needs


TARGET = {"model_utility": 0.5, "forget/forget_quality": 1e-6, "forget/probability": 0.8, "forget/rouge_l": 0.7}
RETAIN = {"model_utility": 0.5, "forget/forget_quality": 1.0, "forget/probability": 0.4, "forget/rouge_l": 0.3}


def _point(method: str, lr: float, seed: int = 0, **metrics: float) -> dict:
    return {"train": {"method": method, "lr": lr, "seed": seed}, "metrics": {**TARGET, **metrics}}


def test_rule_bound_is_the_documented_one() -> None:
    assert tofu.admissible({"model_utility": 0.45}, TARGET)
    assert not tofu.admissible({"model_utility": 0.449}, TARGET)
    assert not tofu.admissible({"model_utility": float("nan")}, TARGET)
    assert not tofu.admissible({}, TARGET)


def test_choose_takes_the_highest_admissible_forget_quality_ties_by_utility() -> None:
    points = [
        _point("m", 1e-5, **{"forget/forget_quality": 1e-4}),
        _point("m", 3e-5, **{"forget/forget_quality": 0.2, "model_utility": 0.46}),
        _point("m", 1e-4, **{"forget/forget_quality": 0.2, "model_utility": 0.48}),
        _point("m", 3e-4, **{"forget/forget_quality": 0.9, "model_utility": 0.1}),  # highest, but breaks utility
    ]
    assert tofu.choose(points, TARGET) == {"point": "m_lr0.0001_s0", "lr": 1e-4, "admissible": True}
    assert tofu.choose(points[3:], TARGET) == {"point": None, "admissible": False}


def test_finetune_check() -> None:
    assert tofu.finetune_check(TARGET, RETAIN)["ok"]
    assert not tofu.finetune_check({**TARGET, "forget/probability": 0.45}, RETAIN)["ok"]  # learned too little
    assert not tofu.finetune_check({**TARGET, "forget/forget_quality": 0.3}, RETAIN)["ok"]  # KS test cannot tell
    assert not tofu.finetune_check({}, RETAIN)["ok"]


def test_report_from_cached_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tofu, "OUT", tmp_path)
    lrs = [1e-5, 1e-4]

    def cache(kind: str, name: str, obj: dict) -> None:
        (tmp_path / kind).mkdir(exist_ok=True)
        (tmp_path / kind / f"{name}.json").write_text(json.dumps(obj))

    cache("evals", "target", {"metrics": TARGET, "seconds": 60.0})
    cache("evals", "retain", {"metrics": RETAIN, "seconds": 60.0})
    cache("points", "target", {"which": "target", "train_seconds": 600.0})
    for lr, fq in zip(lrs, (1e-3, 0.1)):
        for seed in (0, 1, 2) if lr == 1e-4 else (0,):
            name = tofu.point_name("ga", lr, seed)
            train = {"method": "ga", "lr": lr, "seed": seed, "forget_grad_norm": [1.0, 2.0], "forget_grad_norm_max": 2.0,
                     "conflict_probability": None, "seconds_per_step": 1.0, "status": "completed", "train_seconds": 30.0}
            cache("points", name, train)
            cache("evals", name, {"metrics": {**TARGET, "forget/forget_quality": fq + 0.1 * seed}, "seconds": 90.0})
    summary = tofu.write_report(["ga"], lrs)
    assert summary["finetune_check"]["ok"]
    assert summary["chosen"]["ga"]["lr"] == 1e-4 and summary["chosen"]["ga"]["seeds"] == [0, 1, 2]
    mean, sd = summary["chosen"]["ga"]["mean_sd"]["forget/forget_quality"]
    assert mean == pytest.approx(0.2) and sd == pytest.approx(0.1)
    report = (tmp_path / "report.md").read_text()
    assert "| ga | 0.0001 | 3 | 0.2 ± 0.1 |" in report
    assert summary["chosen"]["ga"]["forget_quality_by_seed"] == pytest.approx([0.1, 0.2, 0.3])
    assert summary["chosen"]["ga"]["model_utility_by_seed"] == pytest.approx([TARGET["model_utility"]] * 3)
    assert " | 0.1 / 0.2 / 0.3 | 2 |" in report  # each seed's forget quality, the gradient norm's max over seeds
    assert "| ga | 1e-05 | yes | 0.001 |" in report
    assert "| target (all 40 authors) | 1e-06 | 0.5 |" in report
    assert "2 grid point(s) took 4 min" in report
    assert "Seeds: 2 more point(s) took 4 min (120 s per point)." in report
    assert "admissible: model utility >= 0.9 x the target's (0.45)" in report
    assert (tmp_path / "fq_vs_mu.png").stat().st_size > 0 and (tmp_path / "grad_norms.png").stat().st_size > 0


def test_a_model_with_non_finite_scores_is_a_reported_result_not_a_crash(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mollm.evaluation

    def wrecked(*args, **kwargs):
        raise FloatingPointError("per-item value 3 is nan; the model produced non-finite scores")

    monkeypatch.setattr(tofu, "OUT", tmp_path)
    monkeypatch.setattr(mollm.evaluation, "evaluate", wrecked)
    got = tofu.evaluate_model(tmp_path / "model", "ga_lr0.0001_s0", work)
    assert got["metrics"] == {} and "non-finite" in got["error"]
    assert json.loads((tmp_path / "evals" / "ga_lr0.0001_s0.json").read_text()) == got  # cached: not retried
    assert not tofu.admissible(got["metrics"], {tofu.UTILITY: 0.5})


@pytest.mark.parametrize("script", ["tofu.py", "harmful.py"])
def test_smoke_refuses_the_real_cache(script: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(_PATH.parent / script), "--smoke"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--smoke needs a scratch --out and --work" in done.stderr
