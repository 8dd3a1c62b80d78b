"""``mollm sweep``: a grid of runs under one folder, a sweep table and a Pareto plot (see :mod:`mollm.sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def sweep_cmd(
    config: Annotated[Path, typer.Argument(help="YAML run configuration; its `sweep:` section gives the grid.")],
    grid: Annotated[
        Optional[list[str]],
        typer.Option("--grid", "-g", help="A grid key and its values, e.g. --grid optimizer.lr=1e-5,3e-5 (repeatable)."),
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", "-s", help="Override a key for every point, e.g. --set steps=20.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Sweep folder (default: the config's sweep.output_dir).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start over (the old folder is kept until the first point ran).")] = False,
) -> None:
    """Run every combination of the grid as its own run, skipping finished points and resuming unfinished ones; write
    sweep.csv / sweep.md and a Pareto plot of the config's sweep.x and sweep.y metrics."""
    from mollm.core.errors import ConfigError
    from mollm.core.outputs import OutputExistsError
    from mollm.sweep import parse_grid, run_sweep

    try:
        result = run_sweep(config, set_ or [], parse_grid(grid or []), output_dir=out, overwrite=overwrite)
    except (ConfigError, OutputExistsError, ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    for row in result.rows:
        typer.echo(f"{row['run']}: {row['status']}")
    typer.echo(f"sweep table: {result.sweep_dir / 'sweep.md'} (+ sweep.csv, compare.html, pareto.png)")
    if result.failed:
        typer.secho(f"{len(result.failed)} of {len(result.rows)} points failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
