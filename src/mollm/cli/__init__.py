"""The ``mollm`` command line: ``mollm COMMAND --help`` for each command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="mollm",
    help="Multi-objective unlearning of large language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_SET = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optimizer.lr=3e-5 (repeatable)."),
]


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _run(config_path: Path, overrides: list[str] | None, mode: str) -> None:
    from mollm.engine.config import ConfigError, load_config
    from mollm.runs import RunError, run

    try:
        config = load_config(config_path, [f"mode={mode}", *(overrides or [])])
        result = run(config)
    except (ConfigError, RunError, ValueError, FileNotFoundError) as err:
        _fail(err)
        return
    if os.environ.get("RANK", "0") != "0":
        return  # data-parallel launch: the main process reports
    typer.echo(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "status": result.status,
                "steps": result.steps,
                "after": {k: v for k, v in result.evaluations.get("after", {}).items() if isinstance(v, (int, float))},
            },
            indent=2,
        )
    )


@app.command()
def unlearn(
    config: Annotated[Path, typer.Argument(help="YAML run configuration (see configs/).")],
    set_: _SET = None,
) -> None:
    """Unlearn: optimise the configured objectives with the configured aggregator and save the model."""
    _run(config, set_, "unlearn")


@app.command()
def finetune(
    config: Annotated[Path, typer.Argument(help="YAML run configuration; objectives are usually one `nll`.")],
    set_: _SET = None,
) -> None:
    """Fine-tune (plain NLL) to build a target model, e.g. 'learn these facts, then forget some'."""
    _run(config, set_, "finetune")


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="Model: 'embedded', a path, a run directory or a hub id.")] = "embedded",
    prompts: Annotated[
        Path, typer.Option(help="Prompts: text (one per line), JSONL or CSV with a prompt/question column.")
    ] = ...,
    out: Annotated[Path, typer.Option(help='Output JSONL of {"prompt", "response"} lines.')] = ...,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat: Annotated[
        bool, typer.Option(help="Use the tokenizer's chat template instead of the plain template.")
    ] = False,
    overwrite: bool = False,
) -> None:
    """Greedy, batched generation for a file of prompts."""
    from mollm.core.device import default_device  # noqa: PLC0415
    from mollm.data.encode import DataError, PromptFormat
    from mollm.data.prompts import read_prompts
    from mollm.evaluation.generation import generate as _generate
    from mollm.engine.checkpoints import load_model_or_checkpoint as load_model

    if out.exists() and not overwrite:
        _fail(FileExistsError(f"{out} exists; pass --overwrite to replace it"))
    try:
        texts = read_prompts(prompts)
        lm, tok = load_model(model, device=default_device())
    except (DataError, ValueError, FileNotFoundError) as err:
        _fail(err)
        return
    fmt = PromptFormat(kind="chat" if chat else "plain")
    responses = _generate(lm, tok, texts, fmt=fmt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    from mollm.core.atomic import atomic_write_text

    atomic_write_text(out, "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(texts, responses)))
    typer.echo(f"wrote {len(responses)} responses to {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo directory (refused otherwise).")] = False,
    quick: Annotated[bool, typer.Option(help="Fewer steps (for a smoke test).")] = False,
) -> None:
    """Fine-tune the embedded SmolLM2 on built-in fictitious facts, then unlearn some of them with MOLLM."""
    from mollm.demo import run_demo

    run_demo(out, overwrite=overwrite, quick=quick)


def _register_subcommands() -> None:
    """Commands defined in their own modules (evaluation, judge, reports, G-effect)."""
    from mollm.cli.evaluate import eval_cmd
    from mollm.cli.geffect import geffect_cmd
    from mollm.cli.judge import judge_app
    from mollm.cli.listing import list_cmd
    from mollm.cli.sweep import sweep_cmd
    from mollm.cli.report import compare_cmd, report_cmd

    app.add_typer(judge_app, name="judge", help="Train or apply a harmfulness judge.")
    app.command("eval")(eval_cmd)
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
    app.command("geffect")(geffect_cmd)
    app.command("list")(list_cmd)
    app.command("sweep")(sweep_cmd)


_register_subcommands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
