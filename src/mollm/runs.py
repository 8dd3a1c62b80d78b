"""Runs as users start them (``mollm unlearn`` / ``finetune``, :func:`mollm.unlearn`): the engine's loop with the
layers above it plugged in — in-run evaluation (:mod:`mollm.evaluation.in_run`) and G-effect tracking
(:mod:`mollm.geffect.tracking`). Everything is checked before the run directory is touched (see
:func:`mollm.engine.plan.build_plan`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mollm.engine.config import RunConfig
from mollm.engine.plan import RunHooks, RunSetup, build_plan
from mollm.engine.run import RunError, RunResult
from mollm.engine.run import run as _engine_run

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from mollm.models.reference import Reference

__all__ = ["FullHooks", "RunError", "RunResult", "run", "validate"]


class FullHooks(RunHooks):
    """In-run evaluation (answers and suites) and G-effect tracking."""

    evaluates = True
    tracks = True

    def problems(self, config: RunConfig) -> list[str]:
        from mollm.evaluation.in_run import run_problems

        return run_problems(config)

    def needs_reference(self, config: RunConfig) -> bool:
        from mollm.evaluation.in_run import needs_reference

        return needs_reference(config)

    def evaluate(
        self,
        setup: RunSetup,
        model: torch.nn.Module,
        reference: Reference | None,
        tag: str,
        out_dir: Path,
        progress: bool,
    ) -> dict[str, Any]:
        from mollm.evaluation.in_run import evaluate_run

        return evaluate_run(setup, model, reference, tag, out_dir, progress)

    def tracker(self, setup: RunSetup) -> Callable[..., Any] | None:
        from mollm.geffect.tracking import run_tracker

        cb = run_tracker(setup)
        return None if cb is None else cb.on_step


def run(
    config: RunConfig,
    *,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run ``config`` (unlearning or fine-tuning, as its ``mode`` says) with evaluation and G-effect tracking."""
    return _engine_run(config, FullHooks(), progress=progress, model=model, tokenizer=tokenizer, on_step=on_step)


def validate(config: RunConfig, *, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Check ``config`` as :func:`run` would before starting (data, options, suites, model spec, truncation); a
    :class:`~mollm.core.errors.ConfigError` lists every problem. Nothing is written and no weights are loaded."""
    build_plan(config, FullHooks(), tokenizer=tokenizer)
