"""Benchmark (issue #9, section 2): knowledge unlearning on a 40-author TOFU subset, every method tuned alike.

TOFU's 200 fictitious authors have 20 question–answer items each, in author order: ``retain90.json`` holds authors
0–179 and ``forget10.json`` authors 180–199 (``forget05`` is its last 10 authors, ``forget01`` its last 2), and
``retain_perturbed.json`` is exactly the first 400 items of ``retain90`` (authors 0–19, with paraphrased and perturbed
answers); :func:`build_subset` checks all of this on the data before it writes anything. The subset:

* ``forget``: 4 authors of forget10 (its last 4: forget01's two and two more of forget05), 80 items, with the
  perturbed answers that truth ratios need;
* ``retain``: authors 0–35 of retain90, 720 items; evaluated on 40 ``retain_perturbed`` items, two of each of
  authors 0–19 (trained authors);
* ``holdout``: 4 other forget10 authors, 80 items never trained on: the non-members of membership inference.

The embedded SmolLM2-135M-Instruct is fine-tuned (plain ``### Question / ### Answer`` template, NLL) on all 40 authors
— the **target** — and, with the same recipe (seed, epochs, batch, learning rate, schedule), on the 36 retain authors
only — the **retain model**, the gold standard of exact unlearning. Every unlearning method then starts from the
target, runs the same step budget on a learning-rate grid, and each grid point is evaluated on

* ``forget``: forget quality (KS test of its per-item truth ratios against the retain model's), ROUGE-L of the greedy
  answer, answer probability, membership inference against ``holdout`` (AUC; privleak against the retain model's AUC);
* ``retain``, ``real_authors``, ``world_facts``: TOFU's model utility (harmonic mean of probability, ROUGE-L and truth
  ratio on each);

and its training log gives the forget gradient-norm trajectory, the conflict probability and seconds per step. Each
method's point is chosen by the rule in ``bench/README.md`` (written before the runs) and re-run with two more seeds.

Resumable: every finished point is cached in ``bench/results/tofu/points/*.json`` and ``evals/*.json`` and skipped on
a re-run. Models live under ``--work`` (not committed); an unlearned model is deleted once its evaluation is cached
(``--keep-models`` keeps them: 540 MB each).

Usage: ``python bench/tofu.py [--stage grid|seeds|report|all] [--methods ga,mollm] [--lrs 1e-5,3e-5,1e-4]``
(``make bench-tofu`` runs everything).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # (bench/_bench.py: the cache, point runs and plots shared with bench/harmful.py)
from _bench import point_name

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TOFU = DATA / "tofu"
OUT = ROOT / "bench" / "results" / "tofu"

PER_AUTHOR = 20  # TOFU: 20 items per author, in author order
FORGET_AUTHORS = (16, 17, 18, 19)  # forget10 author blocks (forget10 is TOFU authors 180-199): the forget set
HOLDOUT_AUTHORS = (12, 13, 14, 15)  # forget10 author blocks never trained on: membership-inference non-members
RETAIN_AUTHORS = tuple(range(36))  # retain90 authors; 0-19 are retain_perturbed's
RETAIN_EVAL = tuple((a, j) for a in range(20) for j in (a % 10, a % 10 + 10))  # (author, item): 2 per author

# Fine-tuning (target and retain model alike). Epochs count passes over the fine-tune's own data (800 / 720 items).
FT_EPOCHS = 3
FT_STEPS: int | None = None  # set (instead of epochs) by --smoke
FT_LR = 1e-4
FT_BATCH = 8
# Unlearning: 20 steps at batch 4 per objective = one pass over the 80 forget items.
STEPS = 20
MAX_LENGTH = 128  # >99% of the items fit whole (the longest forget item is 139 tokens)
EVAL_MAX_LENGTH = 192
BATCH = 4
LRS = (1e-5, 3e-5, 1e-4)
SEEDS = (0, 1, 2)
# Items per suite, the first of each file: forget = its first 2 authors (196-197), holdout = 192-193, retain = 2
# items of each of authors 0-9. Halved from 80/80/40/40/40 after the retain model's evaluation took 572 s here.
N_EVAL = {"forget": 40, "holdout": 40, "retain": 20, "real_authors": 20, "world_facts": 20}
MAX_NEW_TOKENS = 80  # the longest forget answer is ~75 tokens; a fine-tuned model stops at its EOS before
EVAL_BATCH = 16

_UCE = {"name": "forget", "loss": "uce", "data": "forget", "options": {"eps": 0.5}}
_KL = {"name": "kl", "loss": "kl", "data": "retain"}
_NLL = {"name": "retain", "loss": "nll", "data": "retain"}
_MOLLM_OBJECTIVES = [_UCE, _KL, _NLL]

#: method -> (objectives, aggregator). The KL is to the target (the run's starting model) on retain data.
METHODS: dict[str, tuple[list[dict[str, Any]], str]] = {  # in the order they run: the headline comparison first
    "mollm": (_MOLLM_OBJECTIVES, "ds_mgda"),
    "ga": ([{"name": "forget", "loss": "ga", "data": "forget"}], "linear"),
    "weighted_sum": (_MOLLM_OBJECTIVES, "linear"),
    "ga_kl": ([{"name": "forget", "loss": "ga", "data": "forget"}, _KL], "linear"),
    "graddiff": ([{"name": "forget", "loss": "ga", "data": "forget"}, _NLL], "linear"),
    "npo": ([{"name": "forget", "loss": "npo", "data": "forget"}, _NLL], "linear"),
    "simnpo": ([{"name": "forget", "loss": "simnpo", "data": "forget"}, _NLL], "linear"),
    "wga": ([{"name": "forget", "loss": "wga", "data": "forget"}, _NLL], "linear"),
    "mgda": (_MOLLM_OBJECTIVES, "mgda"),
    "upgrad": (_MOLLM_OBJECTIVES, "upgrad"),
    "pcgrad": (_MOLLM_OBJECTIVES, "pcgrad"),
}

# The selection rule (bench/README.md): admissible = model utility >= UTILITY_FLOOR x the target's; chosen = the
# highest forget quality; ties by higher model utility.
UTILITY_FLOOR = 0.9
PRIMARY = "forget/forget_quality"
UTILITY = "model_utility"


def configure(out: Path, *, smoke: bool = False) -> None:
    """Point the cache at ``out``; ``smoke`` shrinks every run and suite to check the pipeline in minutes."""
    global OUT, STEPS, FT_STEPS, N_EVAL, MAX_NEW_TOKENS, SEEDS
    OUT = out
    if smoke:
        STEPS, FT_STEPS, MAX_NEW_TOKENS, SEEDS = 2, 2, 8, (0, 1)
        N_EVAL = {"forget": 6, "holdout": 6, "retain": 2, "real_authors": 2, "world_facts": 2}


# --- the subset ------------------------------------------------------------------------------------------------


def subset_paths(work: Path) -> dict[str, Path]:
    """Where :func:`build_subset` writes the subset's files."""
    folder = work / "data"
    return {k: folder / f"{k}.json" for k in ("forget", "retain", "all", "holdout", "retain_eval")}


def _read_json_array(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def _blocks(items: list[dict[str, Any]], authors: tuple[int, ...]) -> list[dict[str, Any]]:
    return [items[PER_AUTHOR * a + i] for a in authors for i in range(PER_AUTHOR)]


def _author_name(items: list[dict[str, Any]]) -> str | None:
    """An author's name: the most common ``subject`` of their items (the pariidanDKE copy of forget10 has it)."""
    names = Counter(it.get("subject") for it in items if it.get("subject"))
    return names.most_common(1)[0][0] if names else None


def build_subset(work: Path, tofu: Path = TOFU) -> dict[str, Path]:
    """Write the subset's files under ``work/data`` (JSON arrays of the original TOFU items, read back with the
    ``tofu:PATH`` data spec) after checking the layout they rely on; a file whose content would not change is left
    alone. Returns the paths."""
    forget10 = _read_json_array(tofu / "forget10.json")
    retain90 = _read_json_array(tofu / "retain90.json")
    perturbed = _read_json_array(tofu / "retain_perturbed.json")
    qa = [(it["question"], it["answer"]) for it in perturbed]
    if len(forget10) != 20 * PER_AUTHOR or len(retain90) != 180 * PER_AUTHOR:
        raise ValueError(f"expected forget10 = 400 and retain90 = 3600 items, got {len(forget10)} and {len(retain90)}")
    if qa != [(it["question"], it["answer"]) for it in retain90[: len(qa)]]:
        raise ValueError("retain_perturbed.json is not the first items of retain90.json: the retain evaluation "
                         "would not be on trained authors")
    for key in ("paraphrased_answer", "perturbed_answer"):
        if not all(key in it for it in forget10):
            raise ValueError(f"forget10.json items lack {key!r}: truth ratios cannot be computed")
    for b in FORGET_AUTHORS + HOLDOUT_AUTHORS:  # each block is one author: named in every one of its items
        block = forget10[PER_AUTHOR * b: PER_AUTHOR * (b + 1)]
        name = _author_name(block)
        if not name or not all(name in it["question"] + " " + it["answer"] for it in block):
            raise ValueError(f"forget10.json items {PER_AUTHOR * b}-{PER_AUTHOR * (b + 1) - 1} are not one author's")
    forget, holdout = _blocks(forget10, FORGET_AUTHORS), _blocks(forget10, HOLDOUT_AUTHORS)
    retain = _blocks(retain90, RETAIN_AUTHORS)
    retain_eval = [perturbed[PER_AUTHOR * a + j] for a, j in RETAIN_EVAL]
    files = {"forget": forget, "retain": retain, "all": forget + retain, "holdout": holdout, "retain_eval": retain_eval}
    paths = subset_paths(work)
    for key, items in files.items():
        text = json.dumps(items, ensure_ascii=False, indent=1) + "\n"
        if not paths[key].is_file() or paths[key].read_text(encoding="utf-8") != text:
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            paths[key].write_text(text, encoding="utf-8")  # plain write: a changed file must change its mtime
    return paths


def describe_subset(tofu: Path = TOFU) -> dict[str, Any]:
    """Which authors and how many items each part of the subset has (for the report)."""
    forget10 = _read_json_array(tofu / "forget10.json")

    def authors(blocks: tuple[int, ...]) -> dict[str, Any]:
        return {"forget10_blocks": list(blocks), "tofu_authors": [180 + b for b in blocks], "items": PER_AUTHOR * len(blocks),
                "names": [_author_name(forget10[PER_AUTHOR * b: PER_AUTHOR * (b + 1)]) for b in blocks]}

    return {"forget": authors(FORGET_AUTHORS), "holdout": authors(HOLDOUT_AUTHORS),
            "retain": {"tofu_authors": f"{RETAIN_AUTHORS[0]}-{RETAIN_AUTHORS[-1]}", "items": PER_AUTHOR * len(RETAIN_AUTHORS)},
            "retain_eval": {"tofu_authors": "0-19", "items": len(RETAIN_EVAL), "from": "retain_perturbed.json",
                            "per_author": 2}}


# --- run configs -----------------------------------------------------------------------------------------------


def _base_tree(name: str, work: Path) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "format": {"kind": "plain"},
        "max_length": MAX_LENGTH,
        "grad_clip": 1.0,
        "keep_checkpoints": 1,
        "evaluation": {"before": False, "after": False, "every": 0},
        "output_dir": str(work / "runs" / "{name}"),
    }


def finetune_tree(which: str, work: Path) -> dict[str, Any]:
    """The fine-tune building the ``target`` (NLL on all 40 authors) or the ``retain`` model (the same recipe on the
    36 retain authors only)."""
    if which not in ("target", "retain"):
        raise ValueError(f"which must be 'target' or 'retain', got {which!r}")
    paths = subset_paths(work)
    data = "all" if which == "target" else "retain"
    length = {"steps": FT_STEPS} if FT_STEPS is not None else {"epochs": FT_EPOCHS}
    return {
        **_base_tree(which, work),
        "mode": "finetune",
        "model": "embedded",
        "data": {data: f"tofu:{paths[data]}"},
        "objectives": [{"name": "nll", "loss": "nll", "data": data, "batch_size": FT_BATCH}],
        "aggregator": {"name": "linear"},
        "optimizer": {"name": "adamw", "lr": FT_LR},
        "schedule": {"name": "linear", "warmup_steps": 10},
        **length,
        "checkpoint_every": 100,
    }


def target_dir(work: Path) -> Path:
    return work / "runs" / "target"


def run_tree(method: str, lr: float, seed: int, work: Path, model: str | None = None) -> dict[str, Any]:
    """The run config of one grid point (a plain dict for :func:`mollm.engine.config.load_config`), starting from
    the target (``model`` overrides it, e.g. in tests before any target exists)."""
    objectives, aggregator = METHODS[method]
    paths = subset_paths(work)
    return {
        **_base_tree(point_name(method, lr, seed), work),
        "mode": "unlearn",
        "model": model or str(target_dir(work)),
        "seed": seed,
        "data": {"forget": f"tofu:{paths['forget']}", "retain": f"tofu:{paths['retain']}"},
        "objectives": [{"batch_size": BATCH, **o} for o in objectives],
        "aggregator": {"name": aggregator},
        "optimizer": {"name": "adamw", "lr": lr},
        "steps": STEPS,
        "checkpoint_every": max(1, STEPS // 2),
    }


# --- evaluation ------------------------------------------------------------------------------------------------


def reference_path(work: Path) -> Path:
    """The retain model's results: forget quality's and privleak's reference for every other model."""
    return work / "evals" / "retain" / "results.json"


def suites(work: Path) -> dict[str, Any]:
    """The evaluation suites (the same for every model; for the retain model, whose results are the reference, the
    package compares it with itself: forget quality 1, no privleak)."""
    paths, ref = subset_paths(work), str(reference_path(work))
    utility = ["rouge_l", {"name": "truth_ratio", "kind": "retain"}]
    return {
        "forget": {
            "data": f"tofu:{paths['forget']}",
            "limit": N_EVAL["forget"],
            "metrics": [
                "probability",
                "rouge_l",
                {"name": "forget_quality", "reference": ref, "reference_suite": "forget"},
                {"name": "mia", "holdout": "holdout", "retain_auc": ref, "retain_suite": "forget"},
            ],
        },
        "holdout": {"data": f"tofu:{paths['holdout']}", "limit": N_EVAL["holdout"], "metrics": []},
        "retain": {"data": f"tofu:{paths['retain_eval']}", "limit": N_EVAL["retain"], "metrics": ["probability", *utility]},
        "real_authors": {"data": f"tofu:{TOFU / 'real_authors_perturbed.json'}", "limit": N_EVAL["real_authors"],
                         "metrics": ["normalized_probability", *utility]},
        "world_facts": {"data": f"tofu:{TOFU / 'world_facts_perturbed.json'}", "limit": N_EVAL["world_facts"],
                        "metrics": ["normalized_probability", *utility]},
    }


def evaluate_model(model: Path, label: str, work: Path) -> dict[str, Any]:
    """Evaluate one model; cached in ``bench/results/tofu/evals/LABEL.json`` (the retain model's also needs its
    results file under ``--work``: the other models' reference)."""
    from mollm.data.encode import PromptFormat
    from mollm.evaluation import evaluate
    from mollm.evaluation.in_run import flatten

    path = OUT / "evals" / f"{label}.json"
    if path.is_file() and (label != "retain" or reference_path(work).is_file()):
        return json.loads(path.read_text())
    started = time.time()
    try:
        results = evaluate(
            str(model), suites(work), work / "evals" / label, fmt=PromptFormat(kind="plain"), batch_size=EVAL_BATCH,
            max_length=EVAL_MAX_LENGTH, max_new_tokens=MAX_NEW_TOKENS, progress=False,
        )
    except FloatingPointError as err:  # a wrecked model's scores are not finite: a result, reported, not a crash
        summary = {"model": str(model), "metrics": {}, "error": f"non-finite scores: {err}",
                   "seconds": time.time() - started, "samples": []}
        _write_json(path, summary)
        return summary
    gens = results["suites"]["forget"]["rouge_l"].get("columns", {}).get("generation") or []
    records = _load(suites(work)["forget"])
    samples = [{"question": r.question, "answer": r.answer, "generation": g} for r, g in zip(records[:3], gens)]
    summary = {"model": str(model), "metrics": flatten(results), "seconds": time.time() - started, "samples": samples}
    _write_json(path, summary)
    return summary


def _load(suite: dict[str, Any]) -> list[Any]:
    from mollm.data import load_dataset_spec

    return load_dataset_spec(suite["data"], limit=suite.get("limit"))


# --- training --------------------------------------------------------------------------------------------------


_PREPARED: set[Path] = set()


def prepare(work: Path) -> None:
    """Everything a grid point needs, each step skipped when done: the subset files, the target and the retain
    model, and their evaluations (the retain model's first: it is the reference)."""
    if work in _PREPARED:
        return
    build_subset(work)
    _write_json(OUT / "subset.json", describe_subset())
    dirs = {which: finetune(which, work) for which in ("target", "retain")}
    for which in ("retain", "target"):
        ev = evaluate_model(dirs[which], which, work)
        m = ev["metrics"]
        print(f"{which}: forget probability {_fmt(m.get('forget/probability'))}, forget quality "
              f"{_fmt(m.get(PRIMARY))}, model utility {_fmt(m.get(UTILITY))}", flush=True)
    check = finetune_check(_cached("evals", "target.json")["metrics"], _cached("evals", "retain.json")["metrics"])
    if not check["ok"]:
        print(f"WARNING: {check['text']}", flush=True)
    _PREPARED.add(work)


def finetune(which: str, work: Path) -> Path:
    """Fine-tune the target or the retain model (resuming an interrupted run); its log summary is cached in
    ``points/WHICH.json``. Returns its run directory."""
    path = OUT / "points" / f"{which}.json"
    tree = finetune_tree(which, work)
    run_dir = Path(tree["output_dir"].format(name=which))
    if path.is_file() and (run_dir / "model").is_dir():
        return run_dir
    seconds = _timed_run(tree, run_dir)
    summary = {"which": which, **_bench.log_summary(run_dir, 1, forget="nll"), "train_seconds": seconds,
               "config": tree, "run_dir": str(run_dir)}
    _write_json(path, summary)
    print(f"{which}: fine-tuned ({_fmt(seconds)} s), {summary['steps']} steps, final loss {summary['final_losses']}",
          flush=True)
    return run_dir


def _timed_run(tree: dict[str, Any], run_dir: Path) -> float | None:
    """Run (or resume) ``tree`` to its end; the wall time, None when it had ended already."""
    ran, started = not (run_dir / "run.json").is_file(), time.time()
    _bench.run_resumable(tree)
    return time.time() - started if ran else None


def train_point(method: str, lr: float, seed: int, work: Path, *, need_model: bool = True) -> dict[str, Any]:
    """Train one grid point (resuming an interrupted run) and summarise its log; cached in ``points/NAME.json``.
    ``need_model``: the model is needed (its evaluation is not cached), so a point whose model was deleted is
    trained again."""
    name = point_name(method, lr, seed)
    path = OUT / "points" / f"{name}.json"
    tree = run_tree(method, lr, seed, work)
    run_dir = Path(tree["output_dir"].format(name=name))
    if path.is_file():
        if not need_model or (run_dir / "model").is_dir():
            return json.loads(path.read_text())
        shutil.rmtree(run_dir, ignore_errors=True)  # deleted before its evaluation was cached: train it again
    prepare(work)
    seconds = _timed_run(tree, run_dir)
    summary = {
        "method": method,
        "lr": lr,
        "seed": seed,
        **_bench.log_summary(run_dir, len(METHODS[method][0])),
        "train_seconds": seconds,
        "config": tree,
        "run_dir": str(run_dir),
    }
    _write_json(path, summary)
    return summary


def point(method: str, lr: float, seed: int, work: Path, *, keep_models: bool = False) -> dict[str, Any]:
    """Train and evaluate one point, each half cached; the model is deleted once evaluated unless ``keep_models``."""
    name = point_name(method, lr, seed)
    evaluated = _cached("evals", f"{name}.json") is not None
    started = time.time()
    train = train_point(method, lr, seed, work, need_model=not evaluated)
    run_dir = Path(train["run_dir"])
    if not evaluated:
        prepare(work)
    ev = evaluate_model(run_dir, name, work)
    if not keep_models:
        shutil.rmtree(run_dir / "model", ignore_errors=True)
    m = ev["metrics"]
    print(f"{name}: {time.time() - started:.0f} s, forget quality {_fmt(m.get(PRIMARY))}, model utility "
          f"{_fmt(m.get(UTILITY))}, forget ROUGE-L {_fmt(m.get('forget/rouge_l'))}", flush=True)
    return {"train": train, "metrics": m}


# --- selection -------------------------------------------------------------------------------------------------


def admissible(metrics: dict[str, Any], target: dict[str, Any]) -> bool:
    """The rule's constraint: model utility at least ``UTILITY_FLOOR`` times the target's."""
    value, base = metrics.get(UTILITY), target.get(UTILITY)
    if value is None or base is None or not math.isfinite(value):
        return False
    return value >= UTILITY_FLOOR * base


def choose(points: list[dict[str, Any]], target: dict[str, Any]) -> dict[str, Any]:
    """The rule: among admissible points, the highest forget quality; ties by higher model utility."""
    ok = [p for p in points if admissible(p["metrics"], target) and p["metrics"].get(PRIMARY) is not None]
    if not ok:
        return {"point": None, "admissible": False}
    best = max(ok, key=lambda p: (p["metrics"][PRIMARY], p["metrics"][UTILITY]))
    return {"point": point_name(best["train"]["method"], best["train"]["lr"], 0), "lr": best["train"]["lr"],
            "admissible": True}


def finetune_check(target: dict[str, Any], retain: dict[str, Any]) -> dict[str, Any]:
    """Did the fine-tune teach the forget authors? The target must give their answers clearly more probability
    than the retain model (which never saw them), and forget quality must tell the two apart (p < 0.05)."""
    t, r = target.get("forget/probability"), retain.get("forget/probability")
    fq = target.get(PRIMARY)
    if t is None or r is None or fq is None:
        return {"ok": False, "text": "fine-tune check: numbers missing"}
    ok = t - r >= 0.1 and fq < 0.05
    text = (f"fine-tune check: forget-answer probability {t:.3f} (target) vs {r:.3f} (retain model), forget ROUGE-L "
            f"{_fmt(target.get('forget/rouge_l'))} vs {_fmt(retain.get('forget/rouge_l'))}, the target's forget "
            f"quality {fq:.3g} — " + ("the target learned the forget authors and forget quality tells it from the "
                                      "retain model." if ok else
                                      "FAILED (want a probability gap >= 0.1 and forget quality < 0.05): the grid "
                                      "below does not measure unlearning; fine-tune longer or at a higher rate."))
    return {"ok": ok, "text": text, "probability_gap": t - r}


# --- report ----------------------------------------------------------------------------------------------------

#: (key, column label) of the tables, in order.
COLUMNS: list[tuple[str, str]] = [
    (PRIMARY, "forget quality"),
    (UTILITY, "model utility"),
    ("forget/rouge_l", "forget ROUGE-L"),
    ("forget/probability", "forget prob."),
    ("forget/forget_quality.truth_ratio", "forget truth ratio"),
    ("forget/forget_quality.ks_statistic", "KS D"),  # forget quality's statistic: less cliff-like than its p-value
    ("forget/mia", "MIA AUC (Min-K%)"),
    ("forget/mia.privleak_min_k", "privleak (Min-K%)"),
    ("retain/probability", "retain prob."),
    ("retain/rouge_l", "retain ROUGE-L"),
    ("real_authors/rouge_l", "real-authors ROUGE-L"),
    ("world_facts/rouge_l", "world-facts ROUGE-L"),
]


def _cached(kind: str, name: str) -> dict[str, Any] | None:
    return _bench.read_cached(OUT, kind, name)


def _cached_point(method: str, lr: float, seed: int) -> dict[str, Any] | None:
    name = point_name(method, lr, seed)
    train, ev = _cached("points", f"{name}.json"), _cached("evals", f"{name}.json")
    if train is None or ev is None:
        return None
    return {"train": train, "metrics": ev["metrics"], "eval_seconds": ev.get("seconds")}


_fmt = _bench.fmt
_write_json = _bench.write_json


def write_report(methods: list[str], lrs: list[float]) -> dict[str, Any]:
    """Tables, plots and the chosen points from the cached points (nothing is recomputed); returns the summary."""
    from mollm.core.atomic import atomic_write_bytes, atomic_write_text

    target_ev, retain_ev = _cached("evals", "target.json"), _cached("evals", "retain.json")
    if target_ev is None or retain_ev is None:
        raise SystemExit("no cached evaluation of the target and the retain model yet: run the grid stage first")
    target, retain = target_ev["metrics"], retain_ev["metrics"]
    check = finetune_check(target, retain)
    grid = {m: {lr: _cached_point(m, lr, 0) for lr in lrs} for m in methods}
    summary: dict[str, Any] = {"settings": _settings(lrs), "subset": _cached_subset(),
                               "target": target, "retain": retain, "finetune_check": check, "grid": [], "chosen": {}}
    header = " | ".join(c[1] for c in COLUMNS)
    lines = ["# TOFU knowledge unlearning: the fine-tuned models", "",
             "| model | " + header + " | fine-tune s |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    for which, label, m in (("target", "target (all 40 authors)", target),
                            ("retain", "retain model (36 retain authors)", retain)):
        ft = _cached("points", f"{which}.json") or {}
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(c[0])) for c in COLUMNS)
                     + f" | {_fmt(ft.get('train_seconds'))} |")
    lines += ["", check["text"], "",
              (f"# Every grid point (seed 0); admissible: model utility >= {UTILITY_FLOOR} x the target's "
               f"({_fmt(None if target.get(UTILITY) is None else target[UTILITY] * UTILITY_FLOOR)})"), "",
              "| method | lr | admissible | " + header
              + " | max forget grad norm | conflict prob. | s/step | train s | eval s |",
              "|---|---|---|" + "---|" * (len(COLUMNS) + 5)]
    seconds: list[float] = []
    for m in methods:
        for lr, p in grid[m].items():
            if p is None:
                lines.append(f"| {m} | {lr:g} | not run yet |" + " |" * (len(COLUMNS) + 5))
                continue
            ok, t = admissible(p["metrics"], target), p["train"]
            summary["grid"].append({"method": m, "lr": lr, "admissible": ok, "metrics": p["metrics"],
                                    "forget_grad_norm_max": t["forget_grad_norm_max"],
                                    "conflict_probability": t["conflict_probability"],
                                    "seconds_per_step": t["seconds_per_step"], "status": t["status"],
                                    "train_seconds": t.get("train_seconds"), "eval_seconds": p["eval_seconds"]})
            seconds += [v for v in (t.get("train_seconds"), p["eval_seconds"]) if v is not None]
            lines.append(f"| {m} | {lr:g} | {'yes' if ok else 'no'} | "
                         + " | ".join(_fmt(p["metrics"].get(c[0])) for c in COLUMNS)
                         + f" | {_fmt(t['forget_grad_norm_max'])} | {_fmt(t['conflict_probability'], 2)}"
                         + f" | {_fmt(t['seconds_per_step'])} | {_fmt(t.get('train_seconds'))}"
                         + f" | {_fmt(p['eval_seconds'])} |")
    lines += ["", "# Chosen points (rule in bench/README.md), mean ± sd over seeds", "",
              "| method | lr | seeds | " + header + " | forget quality by seed | max forget grad norm |",
              "|---|---|---|" + "---|" * (len(COLUMNS) + 2)]
    keys = [c[0] for c in COLUMNS]
    seed_seconds: list[float] = []
    for m, lr, seeds, stats in _bench.chosen_points(methods, grid, choose, target, _cached_point, SEEDS, "metrics", keys):
        if lr is None:
            summary["chosen"][m] = {"lr": None, "note": "no admissible grid point"}
            lines.append(f"| {m} | none admissible |" + " |" * (len(COLUMNS) + 1))
            continue
        by_seed = [q["metrics"].get(PRIMARY) for q in seeds]
        grad_max = max((q["train"]["forget_grad_norm_max"] for q in seeds
                        if q["train"].get("forget_grad_norm_max") is not None), default=None)
        summary["chosen"][m] = {"lr": lr, "seeds": [q["train"]["seed"] for q in seeds], "mean_sd": stats,
                                "forget_quality_by_seed": by_seed, "forget_grad_norm_max": grad_max,
                                "model_utility_by_seed": [q["metrics"].get(UTILITY) for q in seeds]}
        cells = _bench.mean_sd_cells(stats, keys, len(seeds))
        for q in seeds[1:]:  # seed 0 is a grid point, timed above
            seed_seconds.append(sum(v for v in (q["train"].get("train_seconds"), q["eval_seconds"]) if v is not None))
        lines.append(f"| {m} | {lr:g} | {len(seeds)} | " + " | ".join(cells)
                     + f" | {' / '.join(_fmt(v) for v in by_seed)} | {_fmt(grad_max)} |")
    if seconds:
        n = len(summary["grid"])
        lines += ["", (f"Measured: {n} grid point(s) took {sum(seconds) / 60:.0f} min of training and evaluation "
                       f"({sum(seconds) / n:.0f} s per point).")]
    if seed_seconds:
        lines += ["", (f"Seeds: {len(seed_seconds)} more point(s) took {sum(seed_seconds) / 60:.0f} min "
                       f"({sum(seed_seconds) / len(seed_seconds):.0f} s per point).")]
    atomic_write_text(OUT / "report.md", "\n".join(lines) + "\n")
    atomic_write_bytes(OUT / "fq_vs_mu.png", _tradeoff_plot(summary))
    atomic_write_bytes(OUT / "grad_norms.png", _bench.grad_norm_plot(OUT, methods, lrs))
    _write_json(OUT / "summary.json", summary)
    print("\n".join(lines))
    return summary


def _cached_subset() -> dict[str, Any] | None:
    path = OUT / "subset.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _settings(lrs: list[float]) -> dict[str, Any]:
    return {"model": "embedded (SmolLM2-135M-Instruct)", "template": "plain",
            "finetune": {"epochs": FT_EPOCHS, "steps": FT_STEPS, "lr": FT_LR, "batch": FT_BATCH, "schedule": "linear",
                         "warmup_steps": 10},
            "steps": STEPS, "batch": BATCH, "max_length": MAX_LENGTH, "lrs": lrs, "seeds": list(SEEDS),
            "n_eval": N_EVAL, "max_new_tokens": MAX_NEW_TOKENS,
            "rule": {"admissible": f"{UTILITY} >= {UTILITY_FLOOR} x target", "chosen": f"max {PRIMARY}"}}


def _tradeoff_plot(summary: dict[str, Any]) -> bytes:
    from matplotlib.lines import Line2D

    plt = _bench.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    grid = [g for g in summary["grid"] if (g["metrics"].get(PRIMARY) or 0) > 0]  # log scale: p-values > 0 only
    styles = _bench.method_styles(list(dict.fromkeys(g["method"] for g in summary["grid"])))
    chosen = {m: c.get("lr") for m, c in summary["chosen"].items()}
    references = [("target", summary["target"], "X", "k"), ("retain model", summary["retain"], "*", "k")]
    floor = summary["target"].get(UTILITY)
    floor = floor * UTILITY_FLOOR if floor is not None else None
    for ax, zoom in zip(axes, (False, True)):
        _bench.tradeoff_scatter(ax, grid, UTILITY, PRIMARY, chosen, styles, minimize=(False, False))
        for m, c in summary["chosen"].items():  # seeds 1, 2 of each chosen point: hollow, in the method's style
            seeds = list(zip(c.get("model_utility_by_seed", []), c.get("forget_quality_by_seed", [])))[1:]
            seeds = [(x, y) for x, y in seeds if x is not None and (y or 0) > 0]
            if seeds:
                colour, marker = styles[m]
                ax.scatter(*zip(*seeds), marker=marker, facecolors="none", edgecolors=colour, s=70, lw=1.5, zorder=5)
        for _, m, marker, colour in references:
            if m.get(UTILITY) is not None and (m.get(PRIMARY) or 0) > 0:
                ax.scatter(m[UTILITY], m[PRIMARY], marker=marker, color=colour, s=150, alpha=0.85, zorder=4)
        if floor is not None:
            ax.axvline(floor, color="grey", ls="--", lw=0.8)
            if zoom:  # the admissible side of the floor, where the chosen points are
                xs = [g["metrics"][UTILITY] for g in grid if g["metrics"].get(UTILITY) is not None]
                xs += [m[UTILITY] for _, m, _, _ in references if m.get(UTILITY) is not None]
                ax.set_xlim(floor - 0.02, max(xs) + 0.01)
        ax.axhline(0.05, color="grey", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("model utility (TOFU: retain, real authors, world facts)")
        ax.grid(alpha=0.3)
        ax.set_title("zoom: the admissible side of the utility floor" if zoom else "every grid point", fontsize=10)
    axes[0].set_ylabel("forget quality (KS-test p-value against the retain model)")
    extra = [Line2D([], [], ls="none", marker=mk, color=c, markersize=10, label=label)
             for label, _, mk, c in references]
    _bench.method_legend(axes[0], styles, extra, fontsize=7, ncol=2, loc="center left")
    fig.suptitle("Forget quality against model utility: the seed-0 grid (faded: dominated; line: Pareto front), "
                 "hollow: the chosen points' seeds 1-2; dashed: the rule's utility floor; dotted: p = 0.05",
                 fontsize=10)
    return _bench.png_bytes(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="all", choices=["grid", "seeds", "report", "all"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    parser.add_argument("--work", type=Path, default=ROOT.parent / "bench_runs" / "tofu")
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (the cache)")
    parser.add_argument("--smoke", action="store_true", help="2 steps, a few items per suite: checks the pipeline")
    parser.add_argument("--keep-models", action="store_true", help="keep every unlearned model (540 MB each)")
    args = parser.parse_args()
    if args.smoke and (args.out.resolve() == OUT.resolve() or args.work.resolve() == parser.get_default("work").resolve()):
        parser.error("--smoke needs a scratch --out and --work: its 2-step runs would be cached as the real ones")
    configure(args.out, smoke=args.smoke)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
    lrs = [float(v) for v in args.lrs.split(",")]
    work = args.work.resolve()
    if args.stage in ("grid", "all"):
        for method in methods:
            for lr in lrs:
                point(method, lr, 0, work, keep_models=args.keep_models)
    if args.stage in ("seeds", "all"):
        if _cached("evals", "target.json") is None:
            prepare(work)
        target = _cached("evals", "target.json")["metrics"]
        for method in methods:
            grid = [point(method, lr, 0, work, keep_models=args.keep_models) for lr in lrs]
            chosen = choose(grid, target)
            if not chosen["admissible"]:
                print(f"{method}: no admissible grid point; no seeds run", flush=True)
                continue
            for seed in SEEDS[1:]:
                point(method, chosen["lr"], seed, work, keep_models=args.keep_models)
    if args.stage in ("report", "all"):
        write_report(methods, lrs)


if __name__ == "__main__":
    main()
