"""The evaluation a run does before, every N steps and after: answer NLL, probability, perplexity and accuracy on
its data sets, plus the metric suites its config names (``evaluation.suites``, the same suites ``mollm eval`` runs).

Kept small on purpose, since it runs inside training; the engine calls it through :class:`mollm.runs` hooks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mollm.data.encode import PromptFormat
from mollm.data.records import QARecord
from mollm.engine.config import RunConfig
from mollm.evaluation import scoring

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mollm.engine.plan import RunSetup
    from mollm.models.reference import Reference

SAMPLES_KEPT = 5  # generations kept per data set in each evaluation file, to read what the model says


def _contains(response: str, answer: str) -> bool:
    return answer.strip().lower().rstrip(".") in response.lower()


def evaluate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Sequence[QARecord]],
    *,
    fmt: PromptFormat,
    max_length: int,
    accuracy: bool = True,
    max_new_tokens: int = 64,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Evaluate each named data set; keys look like ``forget_nll``, ``forget_prob``, ``forget_acc``, ``forget_ppl``."""
    from mollm.evaluation.generation import generate

    result: dict[str, Any] = {}
    for name, records in tqdm(datasets.items(), desc=desc, disable=not progress, unit="set"):
        nll = scoring.answer_nll(model, tokenizer, records, fmt=fmt, max_length=max_length, progress=False).tolist()
        mean_nll = sum(nll) / len(nll)
        result[f"{name}_nll"] = mean_nll
        result[f"{name}_prob"] = sum(math.exp(-x) for x in nll) / len(nll)
        result[f"{name}_ppl"] = math.exp(min(mean_nll, 50.0))
        if accuracy:
            responses = generate(
                model, tokenizer, [r.question for r in records], fmt=fmt, max_new_tokens=max_new_tokens, progress=False
            )
            hits = [_contains(resp, r.answer) for resp, r in zip(responses, records)]
            result[f"{name}_acc"] = sum(hits) / len(hits)
            result.setdefault("samples", {})[name] = [
                {"question": r.question, "answer": r.answer, "response": resp}
                for r, resp in list(zip(records, responses))[:SAMPLES_KEPT]
            ]
    return result


def run_problems(config: RunConfig) -> list[str]:
    """Problems with a run's ``evaluation.suites`` (metric names and options, data, judges), before anything runs."""
    from mollm.evaluation.evaluate import check_suites

    if not config.evaluation.suites:
        return []
    suites = {name: s.model_dump(exclude_none=True) for name, s in config.evaluation.suites.items()}
    return [f"evaluation.suites.{p}" for p in check_suites(suites)]


def evaluate_run(
    setup: RunSetup,
    model: torch.nn.Module,
    reference: Reference | None,
    tag: str,
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """One in-run evaluation: answers on the run's data sets, then the configured suites (headline values only;
    their details go to ``out_dir``)."""
    config, plan = setup.config, setup.plan
    ev = config.evaluation
    keys = ev.datasets or list(plan.data)
    result = evaluate_answers(
        model,
        plan.tokenizer,
        {key: plan.data[key][: ev.max_items] for key in keys},
        fmt=plan.fmt,
        max_length=config.max_length,
        accuracy=ev.accuracy,
        max_new_tokens=ev.max_new_tokens,
        progress=progress,
        desc=f"evaluate ({tag})",
    )
    if ev.suites:
        result["suites"] = _suites(config, model, plan.tokenizer, reference, plan.fmt, out_dir, progress)
    return result


def _suites(
    config: RunConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reference: Reference | None,
    fmt: PromptFormat,
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    from mollm.evaluation.evaluate import evaluate

    suites = {name: s.model_dump(exclude_none=True) for name, s in config.evaluation.suites.items()}
    results = evaluate(
        model,
        suites,
        out_dir,
        cache=False,
        tokenizer=tokenizer,
        reference=reference,
        fmt=fmt,
        max_length=config.max_length,
        max_new_tokens=config.evaluation.max_new_tokens,
        progress=progress,
    )
    model.train()
    flat = {
        f"{suite}/{metric}": r["aggregate"].get("value")
        for suite, metrics in results["suites"].items()
        for metric, r in metrics.items()
    }
    if "model_utility" in results:
        flat["model_utility"] = results["model_utility"]["value"]
    return flat
