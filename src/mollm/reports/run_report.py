"""One run's report: metric table before / after, config summary, training curves (HTML + Markdown + PNG)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from mollm.core.atomic import atomic_write_bytes, atomic_write_text
from mollm.reports._load import (
    TrainingLog,
    flatten_config,
    read_config,
    read_eval_series,
    read_json_metrics,
    read_training_log,
)

__all__ = ["write_report", "format_value", "render_html", "md_table"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.front td{background:#fff0f0;font-weight:600}
figure{margin:1.5em 0} figcaption{color:#555;font-size:13px}
img{max-width:100%} .warn{color:#a60}
"""


def format_value(v: float | None) -> str:
    """Numbers for tables: 4 significant digits, scientific notation for very small / large, '—' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    def td(c: str) -> str:
        is_num = c.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).replace("+", "", 1).isdigit()
        return f'<td class="num">{html.escape(c)}</td>' if is_num else f"<td>{html.escape(c)}</td>"

    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(td(c) for c in r) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def render_html(title: str, blocks: list[tuple[str, Any]]) -> str:
    """Self-contained HTML from blocks: ("h2", text), ("p", text), ("warn", text), ("table", (header, rows[, classes])),
    ("img", (caption, png_bytes)) — images inlined as base64, so the file needs nothing else."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for kind, content in blocks:
        if kind in ("h2", "h3"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "warn":
            parts.append(f'<p class="warn">⚠ {html.escape(content)}</p>')
        elif kind == "table":
            parts.append(_html_table(*content))
        elif kind == "img":
            caption, png = content
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown block kind {kind!r}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _metric_rows(before: dict[str, float] | None, after: dict[str, float] | None) -> list[list[str]]:
    names = sorted(set(before or {}) | set(after or {}))
    rows = []
    for n in names:
        b = (before or {}).get(n)
        a = (after or {}).get(n)
        delta = a - b if a is not None and b is not None else None
        rows.append([n, format_value(b), format_value(a), format_value(delta)])
    return rows


def _training_summary(log: TrainingLog) -> list[list[str]]:
    names = sorted(set(log.losses) | set(log.grad_norms) | set(log.gc) | set(log.coefficients))
    rows = []

    def finite(xs: list[float]) -> list[float]:
        return [x for x in xs if math.isfinite(x)]

    for n in names:
        loss = finite(log.losses.get(n, []))
        gn = finite(log.grad_norms.get(n, []))
        gc = finite(log.gc.get(n, []))
        rows.append(
            [
                n,
                format_value(loss[0] if loss else None),
                format_value(loss[-1] if loss else None),
                format_value(max(gn) if gn else None),
                format_value(sum(gc) / len(gc) if gc else None),
                str(sum(1 for x in gc if x < 0)) if gc else "—",
            ]
        )
    return rows


def _metric_groups(series: dict[str, list[float]]) -> dict[str, list[str]]:
    """Group metric names into plots by their last word (accuracy, nll, probability, ...), so scales match."""
    groups: dict[str, list[str]] = {}
    for name in series:
        kind = name.rsplit(".", 1)[-1].rsplit("/", 1)[-1].rsplit("_", 1)[-1]
        groups.setdefault(kind.replace("/", "_") or "value", []).append(name)
    return groups


_SUMMARY_HEADER = ["objective", "first loss", "last loss", "max grad norm", "mean (G c)_i", "steps with (G c)_i < 0"]


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write ``report.html`` (self-contained, images inlined) and ``report.md`` (+ ``plots/*.png``) for a run.

    Reads whatever of ``eval/before.json``, ``eval/after.json``, ``config.yaml`` and ``metrics.jsonl`` the run directory
    has; missing parts are noted in the report. ``out`` is the output folder (default ``<run_dir>/report``). Returns the
    HTML path.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"write_report: run directory {run_dir} not found")
    out_dir = Path(out) if out is not None else run_dir / "report"
    before = read_json_metrics(run_dir / "eval" / "before.json")
    after = read_json_metrics(run_dir / "eval" / "after.json")
    config = read_config(run_dir / "config.yaml")
    log = read_training_log(run_dir / "metrics.jsonl")

    title = f"mollm run report: {run_dir.name}"
    blocks: list[tuple[str, Any]] = [("p", f"Run directory: {run_dir.resolve()}")]
    md: list[str] = [f"# {title}", "", f"Run directory: `{run_dir.resolve()}`", ""]

    blocks.append(("h2", "Metrics before / after"))
    md += ["## Metrics before / after", ""]
    if before is None and after is None:
        note = "No evaluation results (eval/before.json, eval/after.json) in this run."
        blocks.append(("p", note))
        md += [note, ""]
    else:
        for missing, name in ((before is None, "eval/before.json"), (after is None, "eval/after.json")):
            if missing:
                blocks.append(("warn", f"{name} is missing; its column is empty."))
                md += [f"> {name} is missing; its column is empty.", ""]
        header = ["metric", "before", "after", "after − before"]
        rows = _metric_rows(before, after)
        blocks.append(("table", (header, rows)))
        md += [md_table(header, rows), ""]

    blocks.append(("h2", "Training"))
    md += ["## Training", ""]
    plot_files: list[tuple[str, str]] = []
    if log is None or len(log) == 0:
        note = "No training metrics (metrics.jsonl) in this run." if log is None else "metrics.jsonl has no steps."
        blocks.append(("p", note))
        md += [note, ""]
    else:
        from mollm.reports._plots import training_plots  # matplotlib only when there is something to plot

        cp = log.conflict_probability
        facts = f"{len(log)} logged steps (step {format_value(log.steps[0])} to {format_value(log.steps[-1])})"
        if cp is not None:
            facts += f"; conflict probability {cp:.3f} (fraction of steps whose update conflicts with some objective)"
        blocks.append(("p", facts + "."))
        md += [facts + ".", ""]
        for w in log.warnings:
            blocks.append(("warn", w))
            md += [f"> {w}", ""]
        rows = _training_summary(log)
        if rows:
            blocks.append(("table", (_SUMMARY_HEADER, rows)))
            md += [md_table(_SUMMARY_HEADER, rows), ""]
        for stem, (caption, png) in training_plots(log).items():
            atomic_write_bytes(out_dir / "plots" / f"{stem}.png", png)
            plot_files.append((stem, caption))
            blocks.append(("img", (caption, png)))
            md += [f"![{caption}](plots/{stem}.png)", ""]

    last = int(log.steps[-1]) if log is not None and len(log) else None
    eval_steps, eval_series = read_eval_series(run_dir / "eval", last) if (run_dir / "eval").is_dir() else ([], {})
    if len(eval_steps) > 2:  # more than before / after: show the metrics' curves over the run
        from mollm.reports._plots import plot_series

        blocks.append(("h2", "Evaluation over steps"))
        md += ["## Evaluation over steps", ""]
        for stem, keys in _metric_groups(eval_series).items():
            caption = f"Evaluation over steps: {stem}"
            png = plot_series(eval_steps, {k: eval_series[k] for k in keys}, caption, stem)
            atomic_write_bytes(out_dir / "plots" / f"eval_{stem}.png", png)
            blocks.append(("img", (caption, png)))
            md += [f"![{caption}](plots/eval_{stem}.png)", ""]

    if (run_dir / "geffect.jsonl").is_file():
        from mollm.geffect.plots import plot_curves
        from mollm.geffect.tracking import read_jsonl

        blocks.append(("h2", "G-effects over steps"))
        md += ["## G-effects over steps", ""]
        png_path = plot_curves(
            read_jsonl(run_dir / "geffect.jsonl"), out_dir / "plots" / "geffect.png", title="G-effects during the run"
        )
        caption = "Unlearning (e_u) and retaining (e_r) G-effect of each tracked objective over steps"
        blocks.append(("img", (caption, png_path.read_bytes())))
        md += [f"![{caption}](plots/geffect.png)", ""]

    blocks.append(("h2", "Configuration"))
    md += ["## Configuration", ""]
    if config is None:
        blocks.append(("p", "No config.yaml in this run."))
        md += ["No config.yaml in this run.", ""]
    else:
        rows = [[k, v] for k, v in flatten_config(config)]
        blocks.append(("table", (["key", "value"], rows)))
        md += [md_table(["key", "value"], rows), ""]

    html_path = atomic_write_text(out_dir / "report.html", render_html(title, blocks))
    atomic_write_text(out_dir / "report.md", "\n".join(md).rstrip() + "\n")
    return html_path
