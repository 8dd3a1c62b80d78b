"""``mollm sweep``: a grid over any config keys — the ``ds_mgda`` preference α, ``linear`` weights, learning rate,
steps, seeds — run as ordinary run directories under one sweep folder, then a sweep table and a Pareto plot.

::

    sweeps/NAME/runs/p00_lr=1e-05/     an ordinary run directory per grid point (config.yaml, metrics, eval, model)
    sweeps/NAME/sweep.csv, sweep.md    one row per point: its grid values, status, and every evaluated metric
    sweeps/NAME/compare.html, .md      `mollm compare` of the finished points; pareto.png (front outlined)
    sweeps/NAME/sweep.json             the same, machine-readable

Every point is checked before any runs (one error lists every problem of every point). Running the same sweep again
skips finished points and resumes unfinished ones from their last checkpoint; a point that fails is reported in the
table and the sweep goes on.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from mollm.core.atomic import atomic_write_json, atomic_write_text
from mollm.core.errors import ConfigError
from mollm.core.outputs import ClaimedOutput, claim_output
from mollm.engine.config import RunConfig, SweepConfig, apply_overrides, config_from_dict, read_yaml_mapping

__all__ = ["SweepPoint", "SweepResult", "parse_grid", "sweep_points", "run_sweep"]


@dataclass
class SweepPoint:
    """One grid point: its values (dotted key -> value), its run name and its resolved run config."""

    index: int
    values: dict[str, Any]
    name: str
    config: RunConfig


@dataclass
class SweepResult:
    """What a sweep left behind: its folder and one row per point (values, status, metrics)."""

    sweep_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"].startswith("failed")]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["optimizer.lr=1e-5,3e-5", "aggregator.options.preference=[1,1,1],[2,1,1]"]`` -> grid; each value list is
    read as YAML (so numbers, booleans and lists work)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. optimizer.lr=1e-5,3e-5")
        try:
            values = yaml.safe_load(f"[{raw}]")
        except yaml.YAMLError as err:
            raise ConfigError(f"--grid {item!r}: the values are not valid YAML: {err}") from None
        grid[key.strip()] = [_number(v) for v in values]
    return grid


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; a grid of learning rates means numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _slug(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        text = "-".join(str(v) for v in value) if isinstance(value, list) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={text}")
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts))[:80] or "base"


def sweep_points(tree: Mapping[str, Any], sweep: SweepConfig, sweep_dir: Path, where: str) -> list[SweepPoint]:
    """Every combination of ``sweep.grid`` applied to ``tree`` (the base config), as validated run configs whose
    run directories lie under ``sweep_dir/runs``. A bad key or value is a :class:`ConfigError` naming the point."""
    keys = list(sweep.grid)
    combos = list(itertools.product(*(sweep.grid[k] for k in keys))) if keys else [()]
    points, problems = [], []
    for i, combo in enumerate(combos):
        values = dict(zip(keys, combo))
        name = f"p{i:02d}_{_slug(values)}" if keys else "p00_base"
        point = copy.deepcopy(dict(tree))
        point.pop("sweep", None)
        try:
            for key, value in values.items():
                apply_overrides(point, [f"{key}={json.dumps(value)}"])
            point.update(name=name, output_dir=str(sweep_dir / "runs" / "{name}"), overwrite=False, resume=False)
            points.append(SweepPoint(i, values, name, config_from_dict(point, f"{where} (point {name})")))
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("\n".join(problems))
    return points


_RUN_STATE_KEYS = ("resume", "overwrite", "mixed_precision")  # how a run was started, not what it computes


def _changed_keys(config: RunConfig) -> list[str]:
    """Top-level keys whose values differ from those the point's existing run directory recorded (none if new)."""
    saved_path = config.run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = config.model_dump(mode="json")
    return sorted(k for k in set(now) | set(saved) if k not in _RUN_STATE_KEYS and now.get(k) != saved.get(k))


def _finished(run_dir: Path) -> bool:
    summary = run_dir / "run.json"
    if not summary.is_file():
        return False
    try:
        status = json.loads(summary.read_text()).get("status", "")
    except (OSError, json.JSONDecodeError):
        return False
    return status == "completed" or status.startswith("stopped:")


def run_sweep(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    grid: Mapping[str, list[Any]] | None = None,
    *,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    run: Callable[..., Any] | None = None,
) -> SweepResult:
    """Run (or continue) the sweep a config describes: its ``sweep:`` section, extended by ``grid``
    (:func:`parse_grid`) and ``overrides`` (``key=value`` for every point). An existing sweep folder is continued;
    with ``overwrite`` it is moved aside and deleted once the new sweep's first point has run. ``run`` replaces
    :func:`mollm.runs.run` (tests pass a tiny model through it)."""
    from mollm.runs import run as run_config
    from mollm.runs import validate

    run = run or run_config
    if isinstance(source, Mapping):
        tree, where = copy.deepcopy(dict(source)), "config"
    else:
        tree, where = read_yaml_mapping(source), str(source)
    tree = apply_overrides(tree, list(overrides))
    base = config_from_dict(tree, where)  # the base config itself must be valid
    sweep = base.sweep or SweepConfig()
    if grid:
        sweep = sweep.model_copy(update={"grid": {**sweep.grid, **grid}})
    sweep_dir = Path(output_dir) if output_dir is not None else Path(sweep.output_dir.format(name=base.name))
    points = sweep_points(tree, sweep, sweep_dir, where)

    problems = []
    for p in points:  # every point checked before the sweep folder is touched
        changed = [] if overwrite else _changed_keys(p.config)
        if changed:
            problems.append(
                f"point {p.name}: {p.config.run_dir} was run with other values of {', '.join(changed)}; use another "
                "output_dir, or overwrite=true to start the sweep over"
            )
        elif overwrite or not _finished(p.config.run_dir):
            try:
                validate(p.config)
            except ConfigError as err:
                problems.append(str(err))
    if problems:
        raise ConfigError(f"{where}: the sweep has problems; nothing was run:\n" + "\n".join(problems))

    claim = claim_output(sweep_dir, overwrite=overwrite, resume=not overwrite, what="sweep")
    with claim:  # overwrite: the old sweep comes back if this one stops before its first point ran
        atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump({"base": tree, "sweep": sweep.model_dump()}))
        result = _run_points(points, run, progress, claim)
        _write_tables(result, sweep, list(sweep.grid))
    return result


def _run_points(points: list[SweepPoint], run: Callable[..., Any], progress: bool, claim: ClaimedOutput) -> SweepResult:
    result = SweepResult(claim.path)
    bar = tqdm(points, desc="sweep", unit="run", disable=not progress)
    for p in bar:
        bar.set_postfix_str(p.name)
        run_dir = p.config.run_dir
        if _finished(run_dir):
            status = "done (skipped: finished before)"
        else:
            config = p.config.model_copy(update={"resume": run_dir.exists()})  # an unfinished point continues
            try:
                outcome = run(config, progress=False)
                status = outcome.status
            except Exception as err:  # noqa: BLE001 (one failed point is reported, the sweep goes on)
                status = f"failed: {type(err).__name__}: {err}".splitlines()[0][:300]
        result.rows.append({"run": p.name, "run_dir": str(run_dir), **p.values, "status": status})
        claim.started()
    return result


def _write_tables(result: SweepResult, sweep: SweepConfig, keys: list[str]) -> None:
    from mollm.reports import compare_runs
    from mollm.reports._load import read_json_metrics

    for row in result.rows:
        row["metrics"] = read_json_metrics(Path(row["run_dir"]) / "eval" / "after.json") or {}
    done = [Path(r["run_dir"]) for r in result.rows if Path(r["run_dir"], "eval").is_dir()]
    pareto: dict[str, bool] = {}
    note = ""
    if done:
        try:
            compare_runs(done, result.sweep_dir, sweep.x, sweep.y, sweep.x_direction, sweep.y_direction)
        except ValueError as err:  # e.g. an ambiguous metric name: the table of finished runs is still written
            note = f"\n> No Pareto plot: {err} (set sweep.x / sweep.y and run the sweep again: finished points are kept)\n"
        else:
            compared = json.loads((result.sweep_dir / "compare.json").read_text())
            pareto = {Path(r["path"]).name: r["pareto"] for r in compared["runs"]}
    names = sorted({k for r in result.rows for k in r["metrics"]})
    header = ["run", *keys, "status", "pareto", *names]
    table = [
        [r["run"], *[json.dumps(r.get(k)) for k in keys], r["status"], pareto.get(r["run"], False),
         *[r["metrics"].get(n) for n in names]]
        for r in result.rows
    ]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *table])
    atomic_write_text(result.sweep_dir / "sweep.csv", buf.getvalue())
    shown = ["run", *keys, "status", "pareto", *[n for n in names if n.endswith((sweep.x, sweep.y))]]
    idx = [header.index(h) for h in shown]
    md = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(_cell(row[i]) for i in idx) + " |" for row in table]
    atomic_write_text(
        result.sweep_dir / "sweep.md",
        f"# Sweep {result.sweep_dir.name}\n\n" + "\n".join(md) + "\n\nAll metrics: sweep.csv; Pareto plot: pareto.png\n" + note,
    )
    atomic_write_json(result.sweep_dir / "sweep.json", {"keys": keys, "rows": result.rows, "note": note.strip()})


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")
