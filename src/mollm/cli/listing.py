"""``mollm list``: every registered name (objectives, aggregators, metrics, data kinds, judges) with its options."""

from __future__ import annotations

import json
import textwrap
from typing import Annotated, Any, Optional

import typer

KINDS = ("objectives", "aggregators", "metrics", "data", "judges")


def registries() -> dict[str, Any]:
    """The registries ``mollm list`` prints, by the name users type."""
    from mollm.aggregators.base import AGGREGATORS
    from mollm.data.spec import DATA_KINDS
    from mollm.evaluation.judge import JUDGES
    from mollm.evaluation.registry import METRICS
    from mollm.objectives.registry import OBJECTIVES

    return {
        "objectives": OBJECTIVES,
        "aggregators": AGGREGATORS,
        "metrics": METRICS,
        "data": DATA_KINDS,
        "judges": JUDGES,
    }


def listing(kinds: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{kind: [{"name", "description", "options": [{"name", "type", "default"}]}]}`` for the chosen kinds."""
    from mollm.core.registry import describe_options

    regs = registries()
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds or list(KINDS):
        out[kind] = [
            {
                "name": e.name,
                "description": e.description,
                "options": [{"name": n, "type": t, "default": d} for n, t, d in describe_options(e.options)],
            }
            for e in regs[kind]
        ]
    return out


def list_cmd(
    kind: Annotated[Optional[str], typer.Argument(help=f"One of: {', '.join(KINDS)} (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List every registered objective, aggregator, metric, data kind and judge with its options."""
    if kind is not None and kind not in KINDS:
        typer.secho(f"error: unknown kind {kind!r}; expected one of {', '.join(KINDS)}", fg="red", err=True)
        raise typer.Exit(code=2)
    table = listing([kind] if kind else None)
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    for name, entries in table.items():
        typer.secho(name, bold=True)
        width = max(len(e["name"]) for e in entries) + 2
        for e in entries:
            lines = textwrap.wrap(e["description"], 100 - width) or [""]
            typer.echo(f"  {e['name']:<{width}}{lines[0]}")
            for more in lines[1:]:
                typer.echo(" " * (width + 2) + more)
            for o in e["options"]:
                typer.echo(" " * (width + 4) + f"{o['name']}: {o['type']} = {o['default']}")
        typer.echo("")
