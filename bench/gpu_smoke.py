"""GPU smoke test: short unlearning runs on CUDA, checking that every loss and metric is finite.

Run it on a CUDA machine with whatever CUDA build of torch is installed (nothing is downloaded, nothing outside the
repository is read)::

    make gpu-smoke                  # or: make gpu-smoke PY=/path/to/python ARGS="--model PATH"
    PYTHONPATH=src python bench/gpu_smoke.py [--model PATH] [--only fp32,lora] [--steps 8] [--out FILE.json]

By default the models are built in code with random weights: a tiny Llama for the feature cases and a Llama with the
embedded SmolLM2-135M's shape for timing, each with a word-level tokenizer (``w0 w1 ...``) and question-answer data
made in code, so only torch, transformers, accelerate and peft are needed. ``--model PATH`` (a Hugging Face folder, a
run directory, a ``.gguf`` file, ...) runs the same cases on that model instead.

The cases (``--only`` picks some):

* ``fp32``, ``bf16`` (bf16 weights), ``bf16_mixed`` (fp32 weights, bf16 autocast), ``bf16_grad_rows`` (bf16 autocast
  and bf16 gradient rows), ``lora``, ``grad_ckpt``: ``mollm.engine.run.run`` for ``--steps`` steps (UCE on forget
  data, KL and NLL on retain data; evaluation after the run);
* ``timing``, ``timing_bf16``: the same run on the embedded model's shape (fp32; bf16 autocast);
* ``ddp``, ``fsdp`` (only with >= 2 GPUs): ``torchrun --nproc_per_node 2 -m mollm unlearn CFG.yaml``;
* ``eval``: ``mollm.evaluation.evaluate`` (the metrics of ``mollm eval``) on the model on the device;
* ``eval_cli``: ``python -m mollm eval CFG.yaml`` on the model saved to a folder (the command loads it onto the
  default device: the GPU when there is one);
* ``geffect``: ``mollm.geffect.core.compute_geffects`` for GA, NPO, UCE, KL and NLL.

Each case gives ``{name, ok, finite, seconds_per_step, peak_memory_gb, seconds, error, ...}``: ``seconds_per_step``
is the median time of mollm's multi-objective step (forwards, backwards, Gramian, combination; logged per step in
``metrics.jsonl``) over the steps after the first; ``peak_memory_gb`` is ``torch.cuda.max_memory_allocated`` (1e9
bytes) of this process during the case (null on CPU and for the cases run in subprocesses). A failing case does not
stop the others. The JSON goes to stdout and, on a GPU, to ``bench/results/gpu_smoke.json`` (or ``--out``); the exit
status is 1 if any case failed, 2 if the smoke test could not start (no CUDA, bad options).

``--allow-cpu --device cpu`` is a dry run on the CPU, with the tiny model in place of the embedded shape.
"""

from __future__ import annotations

import os

# Nothing may download: set before transformers is imported.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import gc
import json
import math
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:
    import torch
except ImportError:  # the one thing a GPU machine must bring (with transformers, accelerate and peft)
    sys.exit(
        "gpu_smoke: torch is not installed for this python; install a CUDA build of torch with transformers, "
        "accelerate and peft, or use the python that has them (make gpu-smoke PY=/path/to/python)"
    )

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "gpu_smoke.json"
TINY_VOCAB = 512

# The embedded model's (SmolLM2-135M's) shape, built with random weights for timing.
EMBEDDED_SHAPE: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 2048,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}

Kind = Literal["run", "torchrun", "eval", "eval_cli", "geffect"]
Shape = Literal["tiny", "embedded"]


@dataclass(frozen=True)
class Case:
    """One smoke-test case: what it runs (``kind``), on which model shape, with which run-config keys."""

    name: str
    kind: Kind
    summary: str
    config: dict[str, Any] = field(default_factory=dict)  # run-config keys over the base config (run, torchrun)
    shape: Shape = "tiny"
    min_gpus: int = 0


ALL_CASES: tuple[Case, ...] = (
    Case("fp32", "run", "float32 weights and compute"),
    Case("bf16", "run", "bfloat16 weights", {"dtype": "bfloat16"}),
    Case("bf16_mixed", "run", "float32 weights, bf16 autocast", {"mixed_precision": "bf16"}),
    Case(
        "bf16_grad_rows",
        "run",
        "float32 weights, bf16 autocast, bf16 gradient rows",
        {"mixed_precision": "bf16", "grad_dtype": "bfloat16"},
    ),
    Case("lora", "run", "LoRA adapter (r=8), reference = adapter disabled", {"lora": {"r": 8, "alpha": 16}}),
    Case("grad_ckpt", "run", "gradient checkpointing", {"gradient_checkpointing": True}),
    Case("timing", "run", "the embedded model's shape, float32", shape="embedded"),
    Case("timing_bf16", "run", "the embedded model's shape, bf16 autocast", {"mixed_precision": "bf16"}, "embedded"),
    Case("ddp", "torchrun", "torchrun, 2 processes, DDP", {"distributed": {"strategy": "ddp"}}, min_gpus=2),
    Case("fsdp", "torchrun", "torchrun, 2 processes, FSDP2", {"distributed": {"strategy": "fsdp"}}, min_gpus=2),
    Case("eval", "eval", "mollm.evaluation.evaluate with every metric that needs no judge model"),
    Case("eval_cli", "eval_cli", "python -m mollm eval CFG.yaml on the saved model"),
    Case("geffect", "geffect", "compute_geffects for ga, npo, uce, kl, nll"),
)
CASE_NAMES: tuple[str, ...] = tuple(c.name for c in ALL_CASES)


# --------------------------------------------------------------------------------------------------------------
# Options and the case list


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--only`` is split into a list of names (checked against the cases by :func:`cases`)."""
    p = argparse.ArgumentParser(
        description="GPU smoke test: short unlearning runs, evaluation and a G-effect; JSON with step time and peak "
        "memory per case.",
        epilog=f"cases: {', '.join(CASE_NAMES)}",
    )
    p.add_argument("--model", help="run the cases on this model (path, run dir, .gguf) instead of random ones")
    p.add_argument("--steps", type=int, default=8, help="steps per unlearning run (default: 8)")
    p.add_argument("--only", type=_names, metavar="NAME[,NAME]", help="run only these cases")
    p.add_argument("--out", type=Path, help=f"write the JSON here too (default on a GPU: {DEFAULT_OUT})")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default: cuda")
    p.add_argument("--allow-cpu", action="store_true", help="allow a dry run on the CPU (tiny sizes)")
    p.add_argument("--work-dir", type=Path, help="keep run folders here (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    return args


def cases(args: argparse.Namespace, gpus: int) -> list[Case]:
    """The cases to run with ``gpus`` GPUs (DDP and FSDP need two), filtered by ``--only``.

    Raises ValueError for a name that is no case, or a case this machine cannot run."""
    available = [c for c in ALL_CASES if gpus >= c.min_gpus]
    if not args.only:
        return available
    unknown = [n for n in args.only if n not in CASE_NAMES]
    if unknown:
        raise ValueError(f"--only: unknown case(s) {', '.join(unknown)}; the cases are {', '.join(CASE_NAMES)}")
    too_few = [c.name for c in ALL_CASES if c.name in args.only and gpus < c.min_gpus]
    if too_few:
        verb = "needs" if len(too_few) == 1 else "need"
        raise ValueError(f"--only: {', '.join(too_few)} {verb} at least 2 GPUs; this machine has {gpus}")
    return [c for c in available if c.name in args.only]


# --------------------------------------------------------------------------------------------------------------
# Models, tokenizers and data made in code


@dataclass(frozen=True)
class Sizes:
    """Batch and sequence sizes of a case: small for the tiny model, realistic for the embedded shape."""

    batch_size: int
    max_length: int
    question_words: int
    answer_words: int


def sizes_for(shape: Shape, device: str) -> Sizes:
    if shape == "embedded" and device != "cpu":
        return Sizes(batch_size=4, max_length=256, question_words=24, answer_words=72)
    if device == "cpu":
        return Sizes(batch_size=2, max_length=32, question_words=4, answer_words=4)
    return Sizes(batch_size=4, max_length=64, question_words=6, answer_words=8)


def effective_shape(case: Case, device: str) -> Shape:
    """The embedded shape is for timing on a GPU; a CPU dry run uses the tiny model throughout."""
    return "tiny" if device == "cpu" else case.shape


def _prepare(tokenizer: Any) -> Any:
    # As load_model does: pad with eos, on the right.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(
    args: argparse.Namespace, shape: Shape, dtype: str = "float32", device: str = "cpu"
) -> tuple[torch.nn.Module, Any]:
    """The model and tokenizer of a case: ``--model``, or random weights of ``shape`` with a tokenizer made in code."""
    from mollm.models.tiny import tiny_model, tiny_tokenizer

    if args.model:
        from mollm.models.loading import load_model

        model, tokenizer = load_model(args.model, dtype=dtype)
    elif shape == "tiny":
        model, tokenizer = tiny_model(vocab_size=TINY_VOCAB), tiny_tokenizer(TINY_VOCAB)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        with torch.device(device):  # initialise on the GPU directly: 135M random weights in well under a second
            model = LlamaForCausalLM(LlamaConfig(**EMBEDDED_SHAPE))
        tokenizer = tiny_tokenizer(EMBEDDED_SHAPE["vocab_size"])
    model = model.to(getattr(torch, dtype))
    model.eval()
    return model, _prepare(tokenizer)


# With the in-code tokenizer the prompt template is made of its own words: under the default "### Question: ..."
# (unknown words to it) a random model greedily repeats <unk>, which decodes to "", leaving fluency undefined.
WORD_TEMPLATE = "w0 {question} w1 "


def prompt_format(args: argparse.Namespace) -> Any:
    """The prompt format of every case: mollm's default for ``--model``, else :data:`WORD_TEMPLATE`."""
    from mollm.data.encode import PromptFormat

    return PromptFormat() if args.model else PromptFormat(kind="plain", template=WORD_TEMPLATE)


def make_rows(n: int, sizes: Sizes, seed: int, *, extras: bool = False) -> list[dict[str, Any]]:
    """``n`` question-answer rows of random words ``wN`` (single tokens of the tiny tokenizer); ``extras`` adds the
    paraphrased and perturbed answers that truth ratio and normalised probability need."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(3, TINY_VOCAB - 3)}" for _ in range(k))

    rows: list[dict[str, Any]] = []
    for _ in range(n):
        row: dict[str, Any] = {"question": words(sizes.question_words), "answer": words(sizes.answer_words)}
        if extras:
            row["paraphrased_answer"] = words(sizes.answer_words)
            row["perturbed_answer"] = [words(sizes.answer_words) for _ in range(2)]
        rows.append(row)
    return rows


def make_records(n: int, sizes: Sizes, seed: int, *, extras: bool = False) -> list[Any]:
    from mollm.data.records import QARecord

    return [
        QARecord(r.pop("question"), r.pop("answer"), source=f"gpu_smoke:{seed}:{i}", extra=r)
        for i, r in enumerate(make_rows(n, sizes, seed, extras=extras))
    ]


def run_tree(case: Case, args: argparse.Namespace, sizes: Sizes, out_dir: Path) -> dict[str, Any]:
    """The run configuration of a ``run`` / ``torchrun`` case: three objectives on inline data, a few steps."""
    bs, fmt = sizes.batch_size, prompt_format(args)
    tree: dict[str, Any] = {
        "name": case.name,
        "output_dir": str(out_dir / "{name}"),
        "overwrite": True,
        "seed": 0,
        "max_length": sizes.max_length,
        "format": {"kind": fmt.kind, "template": fmt.template},
        "data": {"forget": make_rows(4 * bs, sizes, seed=1), "retain": make_rows(4 * bs, sizes, seed=2)},
        "objectives": [
            {"name": "forget", "loss": "uce", "data": "forget", "batch_size": bs},
            {"name": "kl", "loss": "kl", "data": "retain", "batch_size": bs},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": bs},
        ],
        "aggregator": {"name": "ds_mgda"},
        "optimizer": {"name": "adamw", "lr": 1e-4},
        "steps": args.steps,
        "evaluation": {"before": False, "after": True, "max_new_tokens": 8, "suites": {k: {"data": k, "limit": 4, "metrics": ["nll", "accuracy"]} for k in ("forget", "retain")}},
    }
    tree.update(case.config)
    return tree


# --------------------------------------------------------------------------------------------------------------
# Checks


def nonfinite(values: dict[str, Any]) -> list[str]:
    """Names of the values that are not finite numbers (None counts: mollm writes NaN and inf as null)."""
    bad = []
    for name, v in values.items():
        if isinstance(v, bool):
            continue
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad.append(name)
    return bad


def _step_values(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Every step's losses and gradient norms, and whether mollm found the step finite."""
    values: dict[str, Any] = {}
    for m in metrics:
        s = m["step"]
        values.update({f"step{s}/loss/{k}": v for k, v in m["losses"].items()})
        values.update({f"step{s}/grad_norm/{k}": v for k, v in m["grad_norms"].items()})
        if not m.get("finite", True):
            values[f"step{s}/finite"] = float("nan")
    return values


def _eval_values(evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The numbers of a run's evaluations (``forget/nll``, ``retain/accuracy``, ...)."""
    return {
        f"eval_{tag}/{k}": v
        for tag, result in evaluations.items()
        for k, v in result.items()
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    }


def _suite_values(results: dict[str, Any]) -> dict[str, Any]:
    """Every aggregate of every metric of an ``evaluate`` result."""
    return {
        f"{suite}/{metric}/{key}": v
        for suite, metrics in results["suites"].items()
        for metric, r in metrics.items()
        for key, v in r["aggregate"].items()
    }


def _seconds_per_step(metrics: list[dict[str, Any]]) -> float | None:
    """Median step time after the first step (which includes warm-up: kernels, allocator, autotuning)."""
    times = [m["seconds"] for m in metrics]
    later = times[1:] or times
    return round(statistics.median(later), 5) if later else None


# --------------------------------------------------------------------------------------------------------------
# The cases


@dataclass
class Env:
    """What every case needs: options, device, sizes and a folder for its files."""

    args: argparse.Namespace
    device: str
    work_dir: Path


@dataclass
class Outcome:
    """What a case measured: the values to check, the step times, and anything worth reporting."""

    values: dict[str, Any]
    seconds_per_step: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_case(case: Case, env: Env) -> Outcome:
    """An unlearning run in this process, on a model built here."""
    from mollm.engine.config import load_config
    from mollm.runs import run

    shape = effective_shape(case, env.device)
    config = load_config(run_tree(case, env.args, sizes_for(shape, env.device), env.work_dir))
    model, tokenizer = build_model(env.args, shape, config.dtype, env.device)
    result = run(config, progress=False, model=model, tokenizer=tokenizer)
    if result.status != "completed":
        raise RuntimeError(f"run status: {result.status}")
    values = {**_step_values(result.metrics), **_eval_values(result.evaluations)}
    return Outcome(values, _seconds_per_step(result.metrics), {"steps": result.steps})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subprocess_env() -> dict[str, str]:
    """This environment with ``src`` on PYTHONPATH and no leftover torchrun variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def _run_command(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=_subprocess_env())
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited with {proc.returncode}:\n{tail}")


def _saved_model(env: Env, dtype: str = "float32") -> str:
    """A model folder for the subprocess cases: ``--model`` itself, or the tiny model saved once."""
    if env.args.model:
        return env.args.model
    folder = env.work_dir / f"tiny_model_{dtype}"
    if not (folder / "config.json").is_file():
        model, tokenizer = build_model(env.args, "tiny", dtype)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def torchrun_case(case: Case, env: Env) -> Outcome:
    """``torchrun --nproc_per_node 2 -m mollm unlearn CFG.yaml``, as the README documents it."""
    import yaml

    tree = run_tree(case, env.args, sizes_for("tiny", env.device), env.work_dir)
    tree["model"] = _saved_model(env, tree.get("dtype", "float32"))
    cfg = env.work_dir / f"{case.name}.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    _run_command([*launch, "-m", "mollm", "unlearn", str(cfg)], timeout=240)

    run_dir = env.work_dir / case.name
    summary = json.loads((run_dir / "run.json").read_text())
    if summary["status"] != "completed" or summary.get("processes") != 2:
        raise RuntimeError(f"run.json: {summary}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    after = json.loads((run_dir / "eval" / "after.json").read_text())
    values = {**_step_values(metrics), **_eval_values({"after": after})}
    extra = {"steps": len(metrics), "strategy": summary.get("strategy"), "processes": summary.get("processes")}
    return Outcome(values, _seconds_per_step(metrics), extra)


def eval_suites(sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Suites with every metric that needs no judge model or reference log (harmful_rate uses the keyword judge)."""
    return {
        "forget": {
            "data": make_records(4, sizes, seed=11, extras=True),
            "metrics": [
                "nll",
                "probability",
                "extraction_strength",
                "rouge_l",
                {"name": "truth_ratio", "kind": "forget"},
                {"name": "mia", "holdout": "holdout"},
            ],
        },
        "retain": {
            "data": make_records(4, sizes, seed=12, extras=True),
            "metrics": ["normalized_probability", {"name": "truth_ratio", "kind": "retain"}, "kl", "fluency"],
        },
        "holdout": {"data": make_records(4, sizes, seed=13), "metrics": []},
        "harmful": {"data": make_records(4, sizes, seed=14), "metrics": [{"name": "harmful_rate", "judge": "keyword"}]},
    }


def _perturbed_with_reference(model: torch.nn.Module) -> Any:
    """The model's frozen reference, then the model nudged away from it (so KL and fluency are not trivially 0)."""
    from mollm.models.reference import Reference

    reference = Reference.from_model(model)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype), alpha=1e-2)
    return reference


def eval_case(case: Case, env: Env) -> Outcome:
    """``mollm.evaluation.evaluate`` on the model on the device, against its reference."""
    from mollm.evaluation import evaluate

    sizes = sizes_for("tiny", env.device)
    model, tokenizer = build_model(env.args, "tiny")
    model.to(env.device)
    reference = _perturbed_with_reference(model)
    results = evaluate(
        model,
        eval_suites(sizes),
        env.work_dir / case.name,
        cache=False,
        tokenizer=tokenizer,
        reference=reference,
        fmt=prompt_format(env.args),
        batch_size=4,
        max_length=sizes.max_length,
        max_new_tokens=8,
        progress=False,
    )
    return Outcome(_suite_values(results))


def eval_cli_case(case: Case, env: Env) -> Outcome:
    """``python -m mollm eval CFG.yaml``: data files, a config, and the model and reference as folders."""
    import yaml

    sizes = sizes_for("tiny", env.device)
    folder = env.work_dir / case.name
    folder.mkdir(parents=True, exist_ok=True)
    suites: dict[str, Any] = {}
    for name, suite in eval_suites(sizes).items():
        path = folder / f"{name}.jsonl"
        path.write_text(
            "".join(json.dumps({"question": r.question, "answer": r.answer, **r.extra}) + "\n" for r in suite["data"])
        )
        suites[name] = {"data": str(path), "metrics": suite["metrics"]}
    model, fmt = _saved_model(env), prompt_format(env.args)
    cfg = {
        "model": model,
        "reference": model,
        "format": {"kind": fmt.kind, "template": fmt.template},
        "max_length": sizes.max_length,
        "max_new_tokens": 8,
        "batch_size": 4,
        "cache": False,
        "output_dir": str(folder / "out"),
        "suites": suites,
    }
    (folder / "eval.yaml").write_text(yaml.safe_dump(cfg))
    _run_command([sys.executable, "-m", "mollm", "eval", str(folder / "eval.yaml")], timeout=240)
    results = json.loads((folder / "out" / "results.json").read_text())
    return Outcome(_suite_values(results))


def geffect_case(case: Case, env: Env) -> Outcome:
    """G-effects of five objectives on a forget and a retain batch, with the reference on the device."""
    from mollm.data.encode import encode_batch
    from mollm.geffect.core import compute_geffects

    sizes = sizes_for("tiny", env.device)
    model, tokenizer = build_model(env.args, "tiny")
    model.to(env.device)
    reference = _perturbed_with_reference(model)

    def batch(seed: int) -> dict[str, torch.Tensor]:
        records = make_records(4, sizes, seed)
        return encode_batch(records, tokenizer, prompt_format(env.args), sizes.max_length, env.device)

    start = time.perf_counter()
    effects = compute_geffects(model, ["ga", "npo", "uce", "kl", "nll"], batch(21), batch(22), reference)
    seconds = time.perf_counter() - start
    values: dict[str, Any] = {}
    for e in effects:
        # Cosines are left out: undefined (null) when an objective's gradient is zero.
        fields = {"e_u": e.e_u, "e_r": e.e_r, "loss": e.loss, "forget_nll": e.forget_nll, "retain_nll": e.retain_nll}
        values.update({f"{e.objective}/{k}": v for k, v in fields.items()})
        values.update({f"{e.objective}/grad_norm/{k}": v for k, v in e.grad_norm.items()})
    return Outcome(values, extra={"geffect_seconds": round(seconds, 4)})


RUNNERS: dict[str, Callable[[Case, Env], Outcome]] = {
    "run": run_case,
    "torchrun": torchrun_case,
    "eval": eval_case,
    "eval_cli": eval_cli_case,
    "geffect": geffect_case,
}


# --------------------------------------------------------------------------------------------------------------
# Measuring and reporting


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure(case: Case, env: Env) -> dict[str, Any]:
    """Run one case and return its record; an exception becomes ``ok: false`` with the error."""
    cuda = env.device == "cuda"
    shape = effective_shape(case, env.device)
    record: dict[str, Any] = {"name": case.name, "summary": case.summary, "shape": env.args.model or shape}
    _release_memory(env.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        outcome = RUNNERS[case.kind](case, env)
        if cuda:
            torch.cuda.synchronize()
        bad = nonfinite(outcome.values)
        record.update(
            ok=not bad,
            finite=not bad,
            seconds_per_step=outcome.seconds_per_step,
            checked_values=len(outcome.values),
            **outcome.extra,
        )
        if bad:
            record["nonfinite"] = bad[:20]
            record["error"] = f"{len(bad)} non-finite value(s), e.g. {bad[0]}"
        else:
            record["error"] = None
    except Exception as err:  # noqa: BLE001 - one failing case must not stop the others
        record.update(ok=False, finite=None, seconds_per_step=None, error=f"{type(err).__name__}: {err}")
        record["traceback"] = traceback.format_exc(limit=-6)
    record["seconds"] = round(time.perf_counter() - start, 2)
    # Subprocess cases allocate in other processes: this process's peak would say nothing about them.
    record["peak_memory_gb"] = (
        round(torch.cuda.max_memory_allocated() / 1e9, 3)
        if cuda and case.kind not in ("torchrun", "eval_cli")
        else None
    )
    _release_memory(env.device)
    return record


def _versions() -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "peft": peft.__version__,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars and no transformers chatter beyond errors while the cases run (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device == "cuda" and torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        why = "CUDA is not available" if args.device == "cuda" else "--device cpu was given"
        print(
            f"gpu_smoke: {why} (torch {torch.__version__}); this smoke test is for a CUDA machine. "
            "Pass --allow-cpu for a dry run on the CPU with tiny sizes.",
            file=sys.stderr,
        )
        return 2
    device = "cuda" if cuda else "cpu"
    if args.device == "cuda" and not cuda:
        print("gpu_smoke: CUDA is not available; a dry run on the CPU (--allow-cpu)", file=sys.stderr)
    gpus = torch.cuda.device_count() if cuda else 0
    try:
        selected = cases(args, gpus)
    except ValueError as err:
        print(f"gpu_smoke: {err}", file=sys.stderr)
        return 2

    report: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpus": gpus,
        "model": args.model or "random weights built in code",
        "steps": args.steps,
        **_versions(),
    }
    start = time.perf_counter()
    with _quiet(), tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        work_dir = args.work_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        env = Env(args, device, work_dir)
        records = []
        for case in selected:
            print(f"gpu_smoke: {case.name} ...", file=sys.stderr, flush=True)
            records.append(measure(case, env))
            status = "ok" if records[-1]["ok"] else f"FAILED: {records[-1]['error']}"
            print(f"gpu_smoke: {case.name} {status} ({records[-1]['seconds']} s)", file=sys.stderr, flush=True)
    report.update(ok=all(r["ok"] for r in records), seconds=round(time.perf_counter() - start, 1), cases=records)

    text = json.dumps(report, indent=2)
    print(text)
    out = args.out or (DEFAULT_OUT if cuda else None)
    if out is not None:
        from mollm.core.atomic import atomic_write_text

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
        print(f"gpu_smoke: wrote {out}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
