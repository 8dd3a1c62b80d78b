"""``mollm geffect``: G-effects of objectives on a model, a run's checkpoints, or a run's logged ``geffect.jsonl``.

Registered by the main app as ``app.command("geffect")(geffect_cmd)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def parse_objectives(spec: str) -> dict[str, Any]:
    """``"ga,npo:beta=0.5,uce:eps=0.3"`` -> {label: Objective}; a bad name or option is a ``typer.BadParameter``."""
    from mollm.objectives import get as get_objective  # noqa: PLC0415

    out: dict[str, Any] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, *kvs = part.split(":")
        opts: dict[str, Any] = {}
        for kv in kvs:
            if "=" not in kv:
                raise typer.BadParameter(
                    f"objective option {kv!r} in {part!r} must look like key=value", param_hint="--objectives"
                )
            k, v = kv.split("=", 1)
            opts[k.strip()] = _value(v.strip())
        try:
            out[part] = get_objective(name.strip(), **opts)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--objectives") from None
    if not out:
        raise typer.BadParameter("give at least one objective, e.g. 'ga,npo:beta=0.5'", param_hint="--objectives")
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def find_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders inside a run folder or its ``checkpoints/`` (``checkpoint-<step>`` / ``step_<step>`` /
    ``step-<step>``), by step."""
    if (run_dir / "checkpoints").is_dir():
        run_dir = run_dir / "checkpoints"
    found = [p for p in run_dir.iterdir() if p.is_dir() and re.fullmatch(r"(checkpoint|step)[-_]\d+", p.name)]
    from mollm.geffect.tracking import step_of  # noqa: PLC0415 (torch only when used: fast --help)

    return sorted(found, key=lambda p: step_of(p, 0))


def geffect_cmd(
    forget: Annotated[
        Optional[str],
        typer.Option(
            help="forget data: a data spec as in run configs (tofu:PATH, facts:forget, a .jsonl/.json/.csv/.parquet file, hf:ID)"
        ),
    ] = None,
    retain: Annotated[
        Optional[str], typer.Option(help="retain data (same forms); without it e_r is not computed")
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            help="model (hub id, folder, GGUF, run folder: its checkpoints/ if any); default: the embedded SmolLM2"
        ),
    ] = None,
    checkpoint: Annotated[
        Optional[list[str]], typer.Option("--checkpoint", "-c", help="a checkpoint folder; repeat, in training order")
    ] = None,
    objectives: Annotated[
        str, typer.Option(help="comma-separated objectives with options, e.g. 'ga,npo:beta=0.5,uce:eps=0.5'")
    ] = "ga,npo,uce",
    reference: Annotated[
        Optional[str],
        typer.Option(help="reference model for npo/tnpo/wtnpo/kl (default: the first model / the LoRA base)"),
    ] = None,
    n_forget: Annotated[int, typer.Option(help="forget items used (the first N)")] = 8,
    n_retain: Annotated[int, typer.Option(help="retain items used (the first N)")] = 8,
    max_length: Annotated[int, typer.Option(help="token truncation")] = 128,
    prompt_format: Annotated[str, typer.Option("--format", help="'plain' or 'chat' prompt")] = "plain",
    per_sample: Annotated[
        bool, typer.Option(help="per-forget-sample effects (2 backward passes per sample and objective)")
    ] = True,
    ema: Annotated[
        bool, typer.Option(help="smooth gradients across checkpoints with the paper's EMA (0.6 old + 0.4 new)")
    ] = False,
    verify: Annotated[
        bool, typer.Option(help="run the first-order check on the (last) model for each objective")
    ] = False,
    eta: Annotated[
        Optional[float], typer.Option(help="step size of the first-order check (default: automatic)")
    ] = None,
    from_jsonl: Annotated[
        Optional[Path], typer.Option(help="only plot/summarise an existing geffect.jsonl (from a run's callback)")
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("geffect_out"),
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing OUT (kept until the new results are written)")
    ] = False,
) -> None:
    """Compute G-effects (by layer, sample and step) and write geffect.json, plots and summary.md to OUT."""
    from mollm.core.atomic import atomic_write_json, atomic_write_text  # noqa: PLC0415
    from mollm.core.outputs import OutputExistsError, claim_output  # noqa: PLC0415
    from mollm.geffect.plots import plot_curves, plot_heatmap, plot_samples, summary_markdown  # noqa: PLC0415
    from mollm.geffect.tracking import read_jsonl  # noqa: PLC0415

    if out.exists() and any(out.iterdir()) and not overwrite:  # before hours of compute, not after
        typer.secho(f"error: {out} already exists; pass --overwrite to replace it", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    checks: list[dict[str, Any]] = []
    if from_jsonl is not None:
        if not from_jsonl.exists():
            raise typer.BadParameter(f"file not found: {from_jsonl}", param_hint="--from-jsonl")
        rows = read_jsonl(from_jsonl)
        if not rows:
            raise typer.BadParameter(f"{from_jsonl} holds no G-effect rows", param_hint="--from-jsonl")
    else:
        if forget is None:
            raise typer.BadParameter("give the forget data (--forget FILE), or --from-jsonl", param_hint="--forget")
        from mollm.core.errors import DataError  # noqa: PLC0415
        from mollm.models.loading import ModelLoadError  # noqa: PLC0415

        try:
            rows, checks = _compute(
                forget,
                retain,
                model,
                checkpoint or [],
                objectives,
                reference,
                n_forget,
                n_retain,
                max_length,
                prompt_format,
                per_sample,
                ema,
                verify,
                eta,
                out,
            )
        except (ModelLoadError, DataError, FileNotFoundError) as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
    md = summary_markdown(rows, checks=checks)
    try:
        claim = claim_output(out, overwrite=overwrite, what="G-effect output")
    except OutputExistsError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    with claim:  # the old OUT is removed only once the new results are on disk
        atomic_write_json(out / "geffect.json", {"rows": rows, "first_order_checks": checks})
        claim.started()
        plot_curves(rows, out / "geffect_curves.png")
        plot_heatmap(rows, out / "geffect_heatmap_e_r.png", key="e_r")
        plot_heatmap(rows, out / "geffect_heatmap_e_u.png", key="e_u")
        if any(r.get("samples") for r in rows):
            plot_samples(rows, out / "geffect_samples.png")
        atomic_write_text(out / "summary.md", md)
    typer.echo(md)
    typer.echo(f"wrote {out}/geffect.json, plots and summary.md")
    if checks and not all(c["passed"] for c in checks):
        typer.echo(
            "first-order check FAILED for: " + ", ".join(c["objective"] for c in checks if not c["passed"]), err=True
        )
        raise typer.Exit(code=1)


def _compute(
    forget: str,
    retain: str | None,
    model_spec: str | None,
    checkpoints: list[str],
    objectives: str,
    reference_spec: str | None,
    n_forget: int,
    n_retain: int,
    max_length: int,
    prompt_format: str,
    per_sample: bool,
    ema: bool,
    verify: bool,
    eta: float | None,
    out: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from mollm.core.device import default_device  # noqa: PLC0415
    from mollm.data.encode import PromptFormat, encode_batch  # noqa: PLC0415
    from mollm.data.spec import load_dataset_spec  # noqa: PLC0415
    from mollm.geffect.core import GradEMA, compute_geffects  # noqa: PLC0415
    from mollm.geffect.tracking import step_of  # noqa: PLC0415
    from mollm.geffect.verify import verify_first_order  # noqa: PLC0415
    from mollm.engine.checkpoints import load_model_or_checkpoint as load_model  # noqa: PLC0415
    from mollm.models.reference import Reference  # noqa: PLC0415

    if prompt_format not in ("plain", "chat"):
        raise typer.BadParameter(f"expected 'plain' or 'chat', got {prompt_format!r}", param_hint="--format")
    if n_forget < 1 or n_retain < 1:
        raise typer.BadParameter("--n-forget and --n-retain must be positive")
    objs = parse_objectives(objectives)
    specs: list[str | None]
    if checkpoints:
        if model_spec is not None:
            raise typer.BadParameter("give either --model or --checkpoint, not both", param_hint="--model")
        specs = list(checkpoints)
    elif model_spec is not None and Path(model_spec).is_dir() and find_checkpoints(Path(model_spec)):
        specs = [str(p) for p in find_checkpoints(Path(model_spec))]
    else:
        specs = [model_spec]
    for s in specs:
        if s is not None and not Path(s).exists() and len(specs) > 1:
            raise typer.BadParameter(f"checkpoint folder not found: {s}", param_hint="--checkpoint")
    forget_recs = load_dataset_spec(forget, limit=n_forget)
    retain_recs = load_dataset_spec(retain, limit=n_retain) if retain else None
    fixed_ref = Reference.from_model(load_model(reference_spec, device=default_device())[0]) if reference_spec else None
    grad_ema = GradEMA() if ema else None
    fmt = PromptFormat(kind=prompt_format)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    first_ref = None
    for k, spec in enumerate(specs):
        typer.echo(f"[{k + 1}/{len(specs)}] loading {spec or 'the embedded model'}")
        model, tok = load_model(spec, device=default_device())
        fb = encode_batch(forget_recs, tok, fmt, max_length)
        rb = encode_batch(retain_recs, tok, fmt, max_length) if retain_recs else None
        if fixed_ref is not None:
            ref = fixed_ref
        elif hasattr(model, "peft_config"):
            ref = Reference.from_model(model)
        else:
            first_ref = first_ref or Reference.from_model(model)
            ref = first_ref
        step = step_of(spec, k) if spec is not None else k
        for r in compute_geffects(model, objs, fb, rb, ref, per_sample=per_sample, ema=grad_ema, step=step):
            rows.append(dict(r.to_dict(), checkpoint=spec))
        if verify and k == len(specs) - 1:
            for label, obj in objs.items():
                c = verify_first_order(model, obj, fb, rb, eta=eta, reference=ref)
                c.objective = label
                checks.append(c.to_dict())
    return rows, checks
