"""``mollm report`` and ``mollm compare``: HTML + Markdown reports of runs (register with ``app.command``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_COMPARE_OUT_HELP = "Output folder for compare.html / compare.md / compare.json and pareto.png."
_DIR_HELP = "'min' or 'max': which way is better for this metric (default: guessed from its name)."


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Output folder (default RUN/report; with several runs, OUT/<run name>)."),
    ] = None,
) -> None:
    """Write a self-contained HTML and a Markdown report per run: metrics before / after, training curves, config."""
    from mollm.core.errors import DataError
    from mollm.reports import write_report

    for run in runs:
        target = None if out is None else (out if len(runs) == 1 else out / run.name)
        try:
            path = write_report(run, target)
        except (DataError, FileNotFoundError, ValueError) as err:
            _fail(err)
            return
        typer.echo(f"{run}: {path} (+ {path.with_suffix('.md').name})")


def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=_COMPARE_OUT_HELP)] = Path("mollm-compare"),
    x: Annotated[str, typer.Option("--x", help="x-axis metric (dotted name or unique suffix).")] = "harmful_rate",
    y: Annotated[str, typer.Option("--y", help="y-axis metric (dotted name or unique suffix).")] = "perplexity",
    x_direction: Annotated[Optional[str], typer.Option("--x-dir", help=_DIR_HELP)] = None,
    y_direction: Annotated[Optional[str], typer.Option("--y-dir", help=_DIR_HELP)] = None,
) -> None:
    """Put runs side by side with a trade-off (Pareto) plot, e.g. harmful rate vs perplexity."""
    from mollm.core.errors import DataError
    from mollm.reports import compare_runs

    try:
        path = compare_runs(runs, out, x, y, x_direction=x_direction, y_direction=y_direction)  # type: ignore[arg-type]
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(err)
        return
    typer.echo(f"{path} (+ compare.md, compare.json, pareto.png)")
