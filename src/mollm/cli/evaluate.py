"""``mollm eval``: compute metric suites for a model and write results JSON (cached, so re-runs are cheap)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def eval_cmd(
    config: Annotated[Path, typer.Argument(help="YAML evaluation config (see configs/eval_*.yaml).")],
    model: Annotated[Optional[str], typer.Option(help="Model to evaluate (overrides the config's `model`).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (overrides the config's `output_dir`).")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", "-s", help="Override a key, e.g. suites.forget.limit=8.")
    ] = None,
) -> None:
    """Evaluate a model (path, run directory, hub id or 'embedded') on the configured metric suites."""
    from mollm.data.encode import DataError, PromptFormat
    from mollm.engine.config import ConfigError
    from mollm.evaluation import available_metrics, evaluate
    from mollm.evaluation.config import load_eval_config

    overrides = list(set_ or [])
    if model:
        overrides.append(f"model={model}")
    if out:
        overrides.append(f"output_dir={out}")
    try:
        cfg = load_eval_config(config, overrides)
        results = evaluate(
            cfg.model,
            cfg.suites_dict(),
            cfg.out_dir,
            cfg.cache,
            reference=cfg.reference,
            fmt=PromptFormat(kind=cfg.format.kind, template=cfg.format.template),
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            max_new_tokens=cfg.max_new_tokens,
        )
    except (ConfigError, DataError, ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}\n(metrics available: {', '.join(available_metrics())})", fg="red", err=True)
        raise typer.Exit(code=2) from None
    summary = {
        suite: {metric: r["aggregate"].get("value") for metric, r in metrics.items()}
        for suite, metrics in results["suites"].items()
    }
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"results: {cfg.out_dir / 'results.json'}")
