"""The evaluation a run does before, every N steps and after: its ``evaluation`` suites — the same suites, metrics
and options a ``mollm eval`` config has — where a suite's ``data`` may name one of the run's data sets.

The engine calls it through the hooks :mod:`mollm.runs` plugs in. Results are flat, ``SUITE/METRIC`` for each
metric's headline value and ``SUITE/METRIC.AGGREGATE`` for its other aggregates (``forget/nll``,
``forget/nll.perplexity``, ``harmful/fluency.entropy_3``); the details go to the evaluation's own folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mollm.engine.config import RunConfig

if TYPE_CHECKING:
    from mollm.engine.plan import RunSetup
    from mollm.models.reference import Reference


def run_problems(config: RunConfig) -> list[str]:
    """Problems with a run's evaluation (metric names and options, data, judges, the ``stop`` metric), found
    before anything runs."""
    from mollm.evaluation.evaluate import check_suites, plan_metrics

    suites = config.evaluation_suites()
    problems = [f"evaluation.suites.{p}" for p in check_suites(suites, run_data=set(config.data))]
    if config.stop is not None and not problems:
        produced = {f"{suite}/{key}" for suite, keys in plan_metrics(suites).items() for key in keys}
        suite_metric = config.stop.metric.split(".")[0]
        if suite_metric not in produced:
            problems.append(
                f"stop.metric: '{config.stop.metric}' is not evaluated; the run evaluates {', '.join(sorted(produced))}"
            )
    return problems


def needs_reference(config: RunConfig) -> bool:
    """Whether a run's evaluation uses the reference (original) model (``kl``, ``fluency``)."""
    from mollm.evaluation.evaluate import plan_metrics
    from mollm.evaluation.registry import get_metric

    plans = plan_metrics(config.evaluation_suites())
    return any(get_metric(name).needs_reference for metrics in plans.values() for name in metrics.values())


def evaluate_run(
    setup: RunSetup,
    model: torch.nn.Module,
    reference: Reference | None,
    tag: str,
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """One in-run evaluation at ``tag``; details in ``out_dir``, flat headline numbers returned."""
    from mollm.evaluation.evaluate import evaluate

    config, plan = setup.config, setup.plan
    suites = {}
    for name, suite in config.evaluation_suites().items():
        data = suite["data"]
        suites[name] = {**suite, "data": plan.data[data] if data in plan.data else data}  # a run data set by name
    results = evaluate(
        model,
        suites,
        out_dir,
        cache=False,
        tokenizer=plan.tokenizer,
        reference=reference,
        fmt=plan.fmt,
        batch_size=config.evaluation.batch_size,
        max_length=config.max_length,
        max_new_tokens=config.evaluation.max_new_tokens,
        progress=progress,
    )
    model.train()
    return flatten(results)


def flatten(results: dict[str, Any]) -> dict[str, float | None]:
    """``SUITE/METRIC`` → headline value and ``SUITE/METRIC.AGGREGATE`` → the other aggregates of an
    :func:`~mollm.evaluation.evaluate.evaluate` result (plus ``model_utility`` when TOFU's was computed)."""
    flat: dict[str, float | None] = {}
    for suite, metrics in results["suites"].items():
        for metric, r in metrics.items():
            for key, value in r["aggregate"].items():
                number = None if value is None or not math.isfinite(float(value)) else float(value)
                flat[f"{suite}/{metric}" if key == "value" else f"{suite}/{metric}.{key}"] = number
    if "model_utility" in results:
        flat["model_utility"] = results["model_utility"]["value"]
    return flat
