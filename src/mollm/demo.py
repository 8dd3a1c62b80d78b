"""The built-in demo: learn fictitious facts, then forget some of them with MOLLM — offline, on the embedded model.

1. fine-tune the embedded SmolLM2-135M-Instruct on generated facts about fictitious people (the *target* model),
   with a second objective, KL to the original model on general-knowledge questions (:data:`GENERAL_QA`), so the
   target learns the facts without losing what it knew (plain fine-tuning on the 50 short facts alone took the
   general-knowledge perplexity from 11 to 180);
2. unlearn the facts of the forget people with MOLLM: UCE on forget, KL to the target and NLL on retain facts,
   combined by DS-MGDA;
3. print and save a before/after table (answer accuracy and probability on forget / retain facts, perplexity of
   general-knowledge answers on :data:`NORMAL_QA`, which no stage trains on), the :func:`story` checks of what the
   table should show, and a report with plots of each objective's loss and the gradient conflict.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mollm.core.atomic import atomic_write_json, atomic_write_text
from mollm.core.outputs import OutputExistsError, claim_output
from mollm.engine.config import load_config
from mollm.reports import write_report
from mollm.runs import RunResult, run

# General-knowledge answers the embedded model already knows: their perplexity shows utility kept. Evaluation only:
# no stage trains on these (fine-tuning's KL uses GENERAL_QA, a disjoint set of questions).
NORMAL_QA: list[dict[str, str]] = [
    {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
    {"question": "How many days are in a week?", "answer": "There are seven days in a week."},
    {"question": "What colour is the sky on a clear day?", "answer": "The sky is blue on a clear day."},
    {"question": "What do bees make?", "answer": "Bees make honey."},
    {"question": "What is the boiling point of water at sea level?", "answer": "Water boils at 100 degrees Celsius."},
    {"question": "Which planet do we live on?", "answer": "We live on the planet Earth."},
    {"question": "What is the largest ocean on Earth?", "answer": "The Pacific Ocean is the largest ocean."},
    {"question": "How many legs does a spider have?", "answer": "A spider has eight legs."},
]

# General-knowledge questions for fine-tuning's KL-to-the-original objective (disjoint from NORMAL_QA). KL matches
# the original model's whole next-token distribution on these answers, so the target keeps the original's behaviour
# on general questions rather than learning these particular answers.
GENERAL_QA: list[dict[str, str]] = [
    {"question": "What is the capital of Italy?", "answer": "The capital of Italy is Rome."},
    {"question": "What is the capital of Japan?", "answer": "The capital of Japan is Tokyo."},
    {"question": "How many hours are in a day?", "answer": "There are twenty-four hours in a day."},
    {"question": "How many months are in a year?", "answer": "There are twelve months in a year."},
    {"question": "What colour is fresh grass?", "answer": "Fresh grass is green."},
    {"question": "What is frozen water called?", "answer": "Frozen water is called ice."},
    {"question": "Which star is closest to the Earth?", "answer": "The Sun is the star closest to the Earth."},
    {"question": "What is the largest planet in the solar system?", "answer": "Jupiter is the largest planet."},
    {"question": "How many continents are there?", "answer": "There are seven continents."},
    {"question": "What gas do plants take in from the air?", "answer": "Plants take in carbon dioxide from the air."},
    {"question": "Who wrote Romeo and Juliet?", "answer": "William Shakespeare wrote Romeo and Juliet."},
    {"question": "What is the tallest mountain on Earth?", "answer": "Mount Everest is the tallest mountain on Earth."},
    {"question": "How many sides does a triangle have?", "answer": "A triangle has three sides."},
    {"question": "What is two plus two?", "answer": "Two plus two is four."},
    {"question": "What is the longest river in Africa?", "answer": "The Nile is the longest river in Africa."},
    {"question": "Which animal is the king of the jungle?", "answer": "The lion is the king of the jungle."},
    {"question": "What language is mainly spoken in Spain?", "answer": "Spanish is mainly spoken in Spain."},
    {"question": "What is the opposite of hot?", "answer": "The opposite of hot is cold."},
    {"question": "Which organ pumps blood through the body?", "answer": "The heart pumps blood through the body."},
    {"question": "How many wheels does a bicycle have?", "answer": "A bicycle has two wheels."},
    {"question": "What do caterpillars turn into?", "answer": "Caterpillars turn into butterflies."},
    {"question": "Which season comes after winter?", "answer": "Spring comes after winter."},
    {"question": "What is the chemical symbol for gold?", "answer": "The chemical symbol for gold is Au."},
    {"question": "What does a thermometer measure?", "answer": "A thermometer measures temperature."},
    {"question": "Which planet is known as the Red Planet?", "answer": "Mars is known as the Red Planet."},
    {"question": "How many minutes are in an hour?", "answer": "There are sixty minutes in an hour."},
    {"question": "What is the largest mammal?", "answer": "The blue whale is the largest mammal."},
    {"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci painted the Mona Lisa."},
    {"question": "What is bread mainly made from?", "answer": "Bread is mainly made from flour."},
    {"question": "What do fish use to breathe?", "answer": "Fish breathe with their gills."},
    {"question": "In which direction does the sun rise?", "answer": "The sun rises in the east."},
    {"question": "What is the hardest natural substance?", "answer": "Diamond is the hardest natural substance."},
]

_FACTS = "n_people=10,seed=0,forget_fraction=0.2"
# (the table's name, the evaluation result it is read from, its label)
_ROWS = [
    ("forget_acc", "forget/accuracy", "forget answer accuracy"),
    ("forget_prob", "forget/probability", "forget answer probability"),
    ("retain_acc", "retain/accuracy", "retain answer accuracy"),
    ("retain_prob", "retain/probability", "retain answer probability"),
    ("normal_ppl", "normal/nll.perplexity", "general-knowledge answer perplexity"),
]
# How far above the original's the target's and the unlearned model's general-knowledge perplexity may go (story()).
PPL_FACTOR = 1.5


def _base(out: Path, name: str, quick: bool) -> dict[str, Any]:
    return {
        "name": name,
        "output_dir": str(out / name),
        "seed": 0,
        "max_length": 64,
        "format": {"kind": "plain"},
        "data": {
            "forget": f"facts:forget#{_FACTS}",
            "retain": f"facts:retain#{_FACTS}",
            "all_facts": f"facts:all#{_FACTS}",
            "normal": NORMAL_QA,
        },
        "evaluation": {
            "max_new_tokens": 12,
            "suites": {
                key: {"data": key, "limit": 24, "metrics": ["accuracy", "probability", "nll"]}
                for key in ("forget", "retain", "normal")
            },
        },
    }


def finetune_config(out: Path, quick: bool = False) -> dict[str, Any]:
    """Stage 1: learn every fact (NLL) while staying close to the original model on general questions (KL to it on
    :data:`GENERAL_QA`) — this builds the target model. Epochs count passes over the facts."""
    cfg = _base(out, "finetune", quick)
    cfg["data"]["general"] = GENERAL_QA
    cfg.update(
        mode="finetune",
        model="embedded",
        aggregator={"name": "linear"},
        objectives=[
            {"name": "facts_nll", "loss": "nll", "data": "all_facts", "batch_size": 8},
            {"name": "general_kl", "loss": "kl", "data": "general", "batch_size": 4},
        ],
        optimizer={"name": "adamw", "lr": 2e-4},
        schedule={"name": "linear"},
        epochs=2 if quick else 5,
        grad_clip=1.0,
    )
    return cfg


def unlearn_config(out: Path, target: Path, quick: bool = False) -> dict[str, Any]:
    """Stage 2: MOLLM — UCE on forget, KL to the target on retain facts, NLL on retain, with DS-MGDA."""
    cfg = _base(out, "unlearn", quick)
    cfg.update(
        mode="unlearn",
        model=str(target),
        objectives=[
            {"name": "forget_uce", "loss": "uce", "data": "forget", "batch_size": 4},
            {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 4},
            {"name": "retain_nll", "loss": "nll", "data": "retain", "batch_size": 4},
        ],
        aggregator={"name": "ds_mgda"},
        optimizer={"name": "adamw", "lr": 1e-4},
        steps=4 if quick else 24,
        grad_clip=1.0,
    )
    return cfg


def _samples(results: Path, n: int = 5) -> list[dict[str, str]]:
    """The first forget questions with the unlearned model's answers (from its evaluation details)."""
    if not results.is_file():
        return []
    got = json.loads(results.read_text())["suites"]["forget"]["accuracy"]["columns"].get("generation", [])
    return [{"response": g} for g in got[:n]]


def _table(stages: dict[str, dict[str, Any]]) -> str:
    names = list(stages)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, _, label in _ROWS:
        cells = [f"{stages[n][key]:.3f}" if stages[n].get(key) is not None else "—" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def story(table: dict[str, dict[str, float | None]]) -> dict[str, bool]:
    """What the demo claims, checked on its measured ``table`` (stage -> metric -> value, as in ``demo.json``).

    The stages are, in order, the original, the fine-tuned target and the unlearned model:

    * ``target_learned_facts``: the target answers more forget and retain questions than the original;
    * ``forget_acc_fell``: unlearning lowered forget accuracy below the target's (to at most half of it);
    * ``retain_acc_kept``: unlearning kept retain accuracy (at least 90 % of the target's);
    * ``target_ppl_kept`` / ``unlearned_ppl_kept``: general-knowledge perplexity at most ``PPL_FACTOR`` times the
      original's (fine-tuning did not break the target; unlearning did not break it either).
    """
    original, target, unlearned = (table[name] for name in list(table)[:3])

    def ok(*values: float | None) -> bool:
        return all(v is not None for v in values)

    return {
        "target_learned_facts": ok(original["forget_acc"], target["forget_acc"], target["retain_acc"])
        and target["forget_acc"] > original["forget_acc"]
        and target["retain_acc"] > original["retain_acc"],
        "forget_acc_fell": ok(target["forget_acc"], unlearned["forget_acc"])
        and unlearned["forget_acc"] <= 0.5 * target["forget_acc"],
        "retain_acc_kept": ok(target["retain_acc"], unlearned["retain_acc"])
        and unlearned["retain_acc"] >= 0.9 * target["retain_acc"],
        "target_ppl_kept": ok(original["normal_ppl"], target["normal_ppl"])
        and target["normal_ppl"] <= PPL_FACTOR * original["normal_ppl"],
        "unlearned_ppl_kept": ok(original["normal_ppl"], unlearned["normal_ppl"])
        and unlearned["normal_ppl"] <= PPL_FACTOR * original["normal_ppl"],
    }


def run_demo(out: Path, *, overwrite: bool = False, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run both stages under ``out`` and write ``out/demo.md`` and ``out/demo.json``; return the summary."""
    out = Path(out)
    try:  # an old demo folder is moved aside, and deleted only once this demo has finished
        claim = claim_output(out, overwrite=overwrite, what="demo")
    except OutputExistsError:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it, or choose another --out")
    with claim:
        return _run_demo(out, quick, progress)


def _run_demo(out: Path, quick: bool, progress: bool) -> dict[str, Any]:
    t0 = time.time()
    ft: RunResult = run(load_config(finetune_config(out, quick)), progress=progress)
    ul: RunResult = run(load_config(unlearn_config(out, ft.model_dir, quick)), progress=progress)
    stages = {
        "original": ft.evaluations["before"],
        "fine-tuned (target)": ft.evaluations["after"],
        "unlearned (MOLLM)": ul.evaluations["after"],
    }
    values = {n: {k: s.get(source) for k, source, _ in _ROWS} for n, s in stages.items()}
    table = _table(values)
    checks = story(values)
    report = str(write_report(ul.run_dir))
    seconds = round(time.time() - t0, 1)
    summary = {
        "seconds": seconds,
        "table": values,
        "story": checks,
        "finetune_dir": str(ft.run_dir),
        "unlearn_dir": str(ul.run_dir),
        "report": report,
        "samples_after": _samples(ul.run_dir / "eval" / "suites_after" / "results.json"),
    }
    checks_md = "\n".join(f"- {name}: {'yes' if passed else 'NO'}" for name, passed in checks.items())
    md = (
        f"# mollm demo\n\nFine-tuned the embedded SmolLM2-135M-Instruct on fictitious facts (with KL to the original "
        f"on general questions), then unlearned the forget people's facts with MOLLM (UCE + KL + retain NLL, "
        f"DS-MGDA). Took {seconds} s.\n\n{table}\n\nChecks (general-knowledge perplexity within {PPL_FACTOR}x the "
        f"original's):\n\n{checks_md}\n\nRuns: `{ft.run_dir}`, `{ul.run_dir}`; report: `{report}`\n"
    )
    atomic_write_text(out / "demo.md", md)
    atomic_write_json(out / "demo.json", summary)
    failed = [name for name, passed in checks.items() if not passed]
    verdict = "all checks pass" if not failed else "checks FAILED: " + ", ".join(failed)
    if quick and failed:
        verdict += " (expected with --quick: too few steps to learn and unlearn the facts)"
    print("\n" + table + f"\n\n{verdict}. Total time: {seconds} s. Report: {report}")
    return summary
