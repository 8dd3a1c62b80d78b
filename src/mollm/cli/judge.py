"""``mollm judge``: train the light embedding judge and score generated responses for harm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

judge_app = typer.Typer(
    help="Harmfulness judges: train the offline MiniLM judge, score responses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_TRAIN_DATA_HELP = "Labelled JSONL: PKU-SafeRLHF rows, or {prompt, response, harmful|is_safe} lines."
_JUDGE_HELP = "'keyword', a folder from 'mollm judge train', or an HF sequence-classification model id/path."
_SCORE_DATA_HELP = "Responses JSONL ({prompt, response} lines, as 'mollm generate' writes)."
_LABEL_HELP = "For HF classifiers: the label name (or index) that means harmful."


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@judge_app.command("train")
def train(
    data: Annotated[Path, typer.Option("--data", help=_TRAIN_DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Folder to save the judge in (judge.json).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/test split (by prompt).")] = 0,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Fraction of prompts held out.")] = 0.2,
    input_mode: Annotated[
        str, typer.Option("--input", help="What is embedded: 'response', 'pair' (prompt + response) or 'auto' (CV).")
    ] = "response",
) -> None:
    """Train the MiniLM + logistic-regression judge; print held-out accuracy, F1 and the majority-class rate."""
    from mollm.core.errors import DataError
    from mollm.evaluation.judge import train_judge

    try:
        report = train_judge(
            data,
            out,
            seed=seed,
            test_fraction=test_fraction,
            input_mode=input_mode,  # type: ignore[arg-type]
        )
    except (DataError, ValueError, FileNotFoundError, ImportError) as err:
        _fail(err)
        return
    typer.echo(
        f"held-out accuracy {report.accuracy:.3f}  F1 {report.f1:.3f}  "
        f"majority-class rate {report.majority_rate:.3f}  (test: {report.n_test} responses / "
        f"{report.n_test_prompts} prompts; input {report.input_mode}, C={report.C:g})"
    )
    typer.echo(f"saved {Path(report.path) / 'judge.json'}")


@judge_app.command("score")
def score(
    judge: Annotated[str, typer.Option("--judge", help=_JUDGE_HELP)],
    data: Annotated[Path, typer.Option("--data", help=_SCORE_DATA_HELP)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON (rate, per-item labels).")] = None,
    harmful_label: Annotated[Optional[str], typer.Option("--harmful-label", help=_LABEL_HELP)] = None,
    show: Annotated[int, typer.Option("--show", help="Print this many per-item labels.")] = 10,
) -> None:
    """Judge each response and print / save the harmful rate with per-item labels."""
    from mollm.core.errors import DataError
    from mollm.evaluation.harmful import score_responses_file
    from mollm.evaluation.judge import get_judge

    label: str | int | None = int(harmful_label) if harmful_label and harmful_label.isdigit() else harmful_label
    try:
        result = score_responses_file(get_judge(judge, harmful_label=label), data, out)
    except (DataError, ValueError, FileNotFoundError, ImportError) as err:
        _fail(err)
        return
    for item in result["items"][: max(show, 0)]:
        text = item["response"].replace("\n", " ")
        verdict = "HARMFUL" if item["harmful"] else "safe   "
        typer.echo(f"{item['index']:>4}  {verdict}  {item['score']:.3f}  {text[:80]}")
    typer.echo(
        f"harmful rate {result['harmful_rate']:.3f} ({result['n_harmful']}/{result['n']}, judge {result['judge']})"
        " -- report it beside fluency metrics: degenerate output also scores as harmless"
    )
    if out is not None:
        typer.echo(f"saved {out}")
    else:
        typer.echo(json.dumps({k: result[k] for k in ("harmful_rate", "n", "n_harmful", "judge")}))
