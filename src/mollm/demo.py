"""The built-in demo: learn fictitious facts, then forget some of them with MOLLM — offline, on the embedded model.

1. fine-tune the embedded SmolLM2-135M-Instruct on generated facts about fictitious people (the *target* model);
2. unlearn the facts of the forget people with MOLLM: UCE on forget, KL to the target and NLL on retain facts,
   combined by DS-MGDA;
3. print and save a before/after table (answer accuracy and probability on forget / retain facts, perplexity of
   general-knowledge answers) and a report with plots of each objective's loss and the gradient conflict.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mollm.engine.config import load_config
from mollm.runs import RunResult, run
from mollm.reports import write_report

# General-knowledge answers the embedded model already knows: their perplexity shows utility kept.
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

_FACTS = "n_people=10,seed=0,forget_fraction=0.2"
_ROWS = [
    ("forget_acc", "forget answer accuracy"),
    ("forget_prob", "forget answer probability"),
    ("retain_acc", "retain answer accuracy"),
    ("retain_prob", "retain answer probability"),
    ("normal_ppl", "general-knowledge answer perplexity"),
]


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
        "evaluation": {"max_items": 24, "max_new_tokens": 12, "datasets": ["forget", "retain", "normal"]},
    }


def finetune_config(out: Path, quick: bool = False) -> dict[str, Any]:
    """Stage 1: learn every fact (plain NLL) — this builds the target model."""
    cfg = _base(out, "finetune", quick)
    cfg.update(
        mode="finetune",
        model="embedded",
        aggregator={"name": "linear"},
        objectives=[{"loss": "nll", "data": "all_facts", "batch_size": 8}],
        optimizer={"name": "adamw", "lr": 2e-4},
        schedule={"name": "linear"},
        epochs=2 if quick else 6,
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


def _table(stages: dict[str, dict[str, Any]]) -> str:
    names = list(stages)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in _ROWS:
        cells = [f"{stages[n][key]:.3f}" if key in stages[n] else "—" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(out: Path, *, overwrite: bool = False, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run both stages under ``out`` and write ``out/demo.md`` and ``out/demo.json``; return the summary."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} exists; pass --overwrite (overwrite=True) to replace it, or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.time()
    ft: RunResult = run(load_config(finetune_config(out, quick)), progress=progress)
    ul: RunResult = run(load_config(unlearn_config(out, ft.model_dir, quick)), progress=progress)
    stages = {
        "original": ft.evaluations["before"],
        "fine-tuned (target)": ft.evaluations["after"],
        "unlearned (MOLLM)": ul.evaluations["after"],
    }
    table = _table(stages)
    report = str(write_report(ul.run_dir))
    seconds = round(time.time() - t0, 1)
    summary = {
        "seconds": seconds,
        "table": {n: {k: s.get(k) for k, _ in _ROWS} for n, s in stages.items()},
        "finetune_dir": str(ft.run_dir),
        "unlearn_dir": str(ul.run_dir),
        "report": report,
        "samples_after": ul.evaluations["after"].get("samples", {}).get("forget", []),
    }
    md = (
        f"# mollm demo\n\nFine-tuned the embedded SmolLM2-135M-Instruct on fictitious facts, then unlearned the "
        f"forget people's facts with MOLLM (UCE + KL + retain NLL, DS-MGDA). Took {seconds} s.\n\n{table}\n\n"
        f"Runs: `{ft.run_dir}`, `{ul.run_dir}`; report: `{report}`\n"
    )
    (out / "demo.md").write_text(md)
    tmp = out / ".demo.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "demo.json")
    print("\n" + table + f"\n\nTotal time: {seconds} s. Report: {report}")
    return summary
