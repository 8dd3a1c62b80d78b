"""The unlearning (or fine-tuning) loop: data -> objectives -> multi-objective step -> optimizer, on ``accelerate``.

One call, :func:`run`, does everything a run needs and writes it to the run directory::

    <run>/config.yaml        resolved configuration (all defaults filled in), seed included
    <run>/metrics.jsonl      one line per step: losses, gradient norms, cosines, coefficients, G c, conflict
    <run>/geffect.jsonl      G-effects every N steps (when the config has a `geffect:` section)
    <run>/eval/*.json        evaluation before / every N steps / after
    <run>/tensorboard/       TensorBoard logs
    <run>/checkpoints/step_N accelerate state (model, optimizer, scheduler, RNG), for resuming
    <run>/model/             final model, Hugging Face format (safetensors)
    <run>/run.json           summary: status, steps, time, paths

Batches are drawn deterministically from (seed, objective, epoch), so a resumed run sees the same data as an
uninterrupted one and reaches the same weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mollm.core.atomic import atomic_write_text
from mollm.data.encode import PromptFormat, collate, encode_record
from mollm.data.records import QARecord
from mollm.engine import checkpoints
from mollm.engine.config import RunConfig, dump_config
from mollm.engine.distributed import describe, make_strategy
from mollm.engine.evaluate import evaluate_answers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mollm.engine.step import StepStats
    from mollm.models.reference import Reference

log = logging.getLogger("mollm")


class RunError(RuntimeError):
    """A run cannot start or had to stop (existing directory, repeated non-finite steps, ...)."""


@dataclass
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    model_dir: Path | None
    steps: int
    status: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


class _Sampler:
    """Deterministic, resumable batches: the batch at step s depends only on (seed, stream, s)."""

    def __init__(
        self,
        examples: list[dict[str, list[int]]],
        batch_size: int,
        seed: int,
        pad_id: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.examples, self.batch_size, self.seed, self.pad_id, self.device = examples, batch_size, seed, pad_id, device
        self._perm_epoch, self._perm = -1, []

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            self._perm = list(range(len(self.examples)))
            random.Random(self.seed * 100_003 + epoch).shuffle(self._perm)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        n, bs = len(self.examples), self.batch_size
        idx = []
        for k in range(step * bs, step * bs + bs):
            idx.append(self._order(k // n)[k % n])
        return collate([self.examples[i] for i in idx], self.pad_id, self.device)


def _load_data(config: RunConfig) -> dict[str, list[QARecord]]:
    from mollm.data import load_dataset_spec

    out: dict[str, list[QARecord]] = {}
    for key, spec in config.data.items():
        if isinstance(spec, list):  # inline records in the YAML
            out[key] = [_inline_record(r, f"config: data.{key}.{i}") for i, r in enumerate(spec)]
        else:
            out[key] = load_dataset_spec(spec)
        if not out[key]:
            raise RunError(f"data.{key}: '{spec}' gave no records")
    return out


def _inline_record(row: dict[str, str], where: str) -> QARecord:
    for field_name in ("question", "answer"):
        if not isinstance(row.get(field_name), str) or not row[field_name].strip():
            raise RunError(f"{where}.{field_name}: expected a non-empty string, found {row.get(field_name)!r}")
    return QARecord(row["question"], row["answer"], source=where)


def _total_steps(config: RunConfig, sizes: list[int], processes: int = 1) -> int:
    if config.steps is not None:
        return config.steps
    # An epoch is one pass over the first objective's data (the forget set, as in TOFU/open-unlearning).
    per_epoch = math.ceil(sizes[0] / (config.objectives[0].batch_size * processes))
    return max(1, math.ceil(config.epochs * per_epoch))


def _scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, total: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config.schedule.name]
    return get_scheduler(name, optimizer, num_warmup_steps=config.schedule.warmup_steps, num_training_steps=total)


def _optimizer(params: list[torch.nn.Parameter], config: RunConfig) -> torch.optim.Optimizer:
    o = config.optimizer
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)


def _prepare_run_dir(config: RunConfig) -> int:
    """Create (or reopen, when resuming) the run directory; return the checkpoint step to resume from (0: none)."""
    run_dir = config.run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if config.resume:
            return checkpoints.latest_step(run_dir)
        if not config.overwrite:
            raise RunError(f"{run_dir} already exists; pass overwrite=true to replace it or resume=true to continue it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return 0


def _truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop log lines past the checkpoint so the log matches an uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= after_step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _from_main(accelerator: Accelerator, value: Any) -> Any:
    """The main process's ``value`` (a decision, a step, an error), known to every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _prepare_run_dir_on_main(config: RunConfig, accelerator: Accelerator) -> int:
    """The main process creates (or reopens) the run directory; every process learns the resume step, or the error."""
    outcome: Any = None
    if accelerator.is_main_process:
        try:
            outcome = _prepare_run_dir(config)
        except RunError as err:
            outcome = err
    outcome = _from_main(accelerator, outcome)
    if isinstance(outcome, RunError):
        raise outcome
    return int(outcome)


def _build_model(
    config: RunConfig, model: torch.nn.Module | None, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The model to train, on the host: loaded from ``config.model`` unless given, with checkpointing and LoRA."""
    from mollm.models.loading import load_model

    dtype = getattr(torch, config.dtype)
    if model is None:
        model, tokenizer = load_model(config.model, dtype=dtype)
    elif any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)  # a model object given directly still trains in the configured dtype
    if tokenizer is None:
        raise RunError("a tokenizer is required when a model object is given")
    if config.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise RunError(f"gradient_checkpointing: {type(model).__name__} does not support it")
        # Non-reentrant: works with frozen inputs (LoRA), FSDP2 and several backward passes per step.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora is not None:
        from mollm.models.lora import apply_lora

        lc = config.lora
        model = apply_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=lc.target_modules)
    model.train()
    return model, tokenizer


def _mixed_precision(config: RunConfig) -> str:
    """``mixed_precision`` from the config, else from ``accelerate launch --mixed_precision`` (its environment)."""
    value = config.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if value not in ("no", "bf16"):
        raise RunError(
            f"mixed_precision={value}: only 'no' and 'bf16' are supported (fp16 needs loss scaling, which would "
            "rescale every objective's row differently from step to step)"
        )
    return value


def _accelerator(config: RunConfig) -> Accelerator:
    # mollm autocasts itself (and FSDP casts its all-gathers), so accelerate's own precision stays "no": its state is
    # per process, and several runs in one process (a sweep) may use different settings.
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="no",
        log_with="tensorboard",
        project_dir=str(config.run_dir),
        step_scheduler_with_optimizer=False,
    )


def _autocast(
    precision: str, device: torch.device, closures: list[Callable[[], torch.Tensor]]
) -> list[Callable[[], torch.Tensor]]:
    """Each objective's forward under bf16 autocast (bf16 matmuls, float32 softmax); its backward outside it."""
    if precision == "no":
        return closures

    def wrap(closure: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def forward() -> torch.Tensor:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                return closure()

        return forward

    return [wrap(c) for c in closures]


def _check_stop(config: RunConfig, evaluation: dict[str, Any]) -> bool:
    if config.stop is None or config.stop.metric not in evaluation:
        return False
    value = evaluation[config.stop.metric]
    if config.stop.above is not None:
        return value > config.stop.above
    return value < config.stop.below


def run(
    config: RunConfig,
    *,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run unlearning or fine-tuning as ``config`` says and return what it produced.

    ``model``/``tokenizer`` may be given directly (e.g. a tiny test model); otherwise ``config.model`` is loaded.
    Under ``torchrun`` / ``accelerate launch`` every process calls this; ``config.distributed`` picks DDP or FSDP2.
    """
    from mollm.aggregators import get as get_aggregator
    from mollm.engine.step import MultiObjectiveStep, objective_closures, trainable_parameters

    precision = _mixed_precision(config)
    config = config.model_copy(update={"mixed_precision": precision})  # config.yaml records what was used
    accelerator = _accelerator(config)
    strategy = make_strategy(accelerator, config.distributed.strategy, precision, config.distributed.shard_size)
    world, rank, main = strategy.world, strategy.rank, accelerator.is_main_process
    run_dir, start_step = config.run_dir, _prepare_run_dir_on_main(config, accelerator)
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
    set_seed(config.seed)
    model, tokenizer = _build_model(config, model, tokenizer)
    job = _Objectives.build(config, tokenizer, strategy.device)
    total = _total_steps(config, [len(s.examples) for s in job.samplers], world)

    needs_reference = job.needs_reference or bool(config.evaluation.suites)
    model, reference = strategy.prepare(model, needs_reference=needs_reference)  # placed, or sharded
    params = trainable_parameters(model)  # after sharding: FSDP2 replaces them with DTensor shards
    optimizer = _optimizer(params, config)
    scheduler = _scheduler(optimizer, config, total)
    if strategy.name != "fsdp":  # fsdp state is saved sharded by torch.distributed.checkpoint instead
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
        accelerator.register_for_checkpointing(model)
    accelerator.init_trackers("tensorboard", config={"seed": config.seed, "lr": config.optimizer.lr})
    step_fn = MultiObjectiveStep(
        params,
        get_aggregator(config.aggregator.name, **_aggregator_options(config)),
        names=job.labels,
        reduction=strategy.reduction,
        grad_dtype=getattr(torch, config.grad_dtype) if config.grad_dtype else None,
        max_norm=config.grad_clip,
    )

    metrics_path = run_dir / "metrics.jsonl"
    if start_step:
        checkpoints.load(strategy, run_dir / "checkpoints" / f"step_{start_step}", model, optimizer, scheduler)
        if main:
            _truncate_metrics(metrics_path, start_step)
            _truncate_metrics(run_dir / "geffect.jsonl", start_step)
    geffects = _geffect_callback(config, job, tokenizer, run_dir, strategy.device) if main else None
    evaluate = _Evaluator(config, strategy, model, tokenizer, reference, job, progress)
    if config.evaluation.before and start_step == 0:
        evaluate("before", start_step)

    status, bad_in_row, history, step = "completed", 0, [], start_step
    t0 = time.time()
    bar = tqdm(total=total, initial=start_step, desc=config.mode, disable=not (progress and main), unit="step")
    with metrics_path.open("a") if main else open(os.devnull, "w") as log_file:
        for step in range(start_step + 1, total + 1):
            batches = [s.batch((step - 1) * world + rank) for s in job.samplers]
            closures = objective_closures(model, job.objectives, batches, reference)
            stats = step_fn(_autocast(precision, strategy.device, closures))
            record = {"step": step, "lr": scheduler.get_last_lr()[0], **_named(stats)}
            bad_in_row = 0 if _update(stats, record, optimizer, scheduler, config) else bad_in_row + 1
            if bad_in_row >= config.max_bad_steps:
                status = f"stopped: {bad_in_row} non-finite steps in a row"
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            history.append(record)
            if step % config.log_every == 0:
                accelerator.log(_scalars(record), step=step)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record["losses"].items() if v is not None})
            if on_step is not None:
                on_step(step, record)
            if status != "completed":
                break
            if geffects is not None:
                geffects.on_step(step, model, reference)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
                checkpoints.save(strategy, run_dir, step, config.keep_checkpoints, model, optimizer, scheduler)
            if config.evaluation.every and step % config.evaluation.every == 0 and step < total:
                result = evaluate(f"step_{step}", step)  # every process: it waits for the main one's evaluation
                if _from_main(accelerator, main and _check_stop(config, result)):
                    status = f"stopped: {config.stop.metric} reached its target at step {step}"
                    break
    bar.close()

    if config.evaluation.after:
        evaluate("after", step)
    model_dir = _save_final_model(config, strategy, model, tokenizer)
    accelerator.end_training()
    summary = {
        "status": status,
        "steps": step,
        "seconds": round(time.time() - t0, 2),
        "seed": config.seed,
        "model_dir": str(model_dir),
        "mode": config.mode,
        **describe(strategy),
    }
    if main:
        atomic_write_text(run_dir / "run.json", json.dumps(summary, indent=2))
    return RunResult(run_dir, model_dir, step, status, history, evaluate.results)


@dataclass
class _Objectives:
    """The run's objectives with their data: losses, labels, batch samplers, G-effect targets, prompt format."""

    objectives: list[Any]
    labels: list[str]
    samplers: list[_Sampler]
    tracked: dict[str, Any]
    data: dict[str, list[QARecord]]
    fmt: PromptFormat
    pad_id: int

    @property
    def needs_reference(self) -> bool:
        return any(o.needs_reference for o in [*self.objectives, *self.tracked.values()])

    @classmethod
    def build(cls, config: RunConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> _Objectives:
        from mollm.objectives import get as get_objective
        from mollm.objectives import prepare_records, read_refusals

        objectives = [get_objective(o.loss, **o.options) for o in config.objectives]
        labels = [o.label for o in config.objectives]
        # G-effect targets: named objectives, or by default the run's own (label -> objective).
        tracked = (
            {n: get_objective(n) for n in config.geffect.objectives}
            if config.geffect and config.geffect.objectives
            else dict(zip(labels, objectives))
        )
        data = _load_data(config)
        fmt = PromptFormat(kind=config.format.kind, template=config.format.template)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        refusals = read_refusals(config.refusals) if config.refusals else None
        normal = data.get("normal") or data.get("retain")
        samplers = []
        for i, (oc, obj) in enumerate(zip(config.objectives, objectives)):
            # idk / mismatch train on transformed records (refusals, random normal answers).
            records = prepare_records(
                obj, data[oc.data], normal=normal, refusals=refusals, rng=random.Random(config.seed + i)
            )
            examples = [encode_record(r, tokenizer, fmt, config.max_length) for r in records]
            samplers.append(_Sampler(examples, oc.batch_size, config.seed + 7919 * (i + 1), pad_id, device))
        return cls(objectives, labels, samplers, tracked, data, fmt, pad_id)


def _update(stats: StepStats, record: dict[str, Any], optimizer: Any, scheduler: Any, config: RunConfig) -> bool:
    """Step the optimizer on a finite step; skip (and log) a non-finite one. Returns whether the step was taken."""
    if not stats.finite:
        record["skipped"] = True
        log.warning("step %d: non-finite loss or gradient (%s); step skipped", record["step"], stats.reason)
        optimizer.zero_grad(set_to_none=True)
        return False
    if config.grad_clip is not None:
        record["clipped_norm"] = stats.direction_norm  # ‖d‖ before clipping (the step clipped), as clip_grad_norm_
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # bf16 rows: frees the float32 copy before the next forward
    scheduler.step()
    return True


class _Evaluator:
    """The in-run evaluation (answers, and the configured suites) at a tag: before, step_N, after.

    Whole weights are the same on every process, so the main one evaluates while the others wait; sharded weights need
    every process in each forward pass, so all evaluate in step. Only the main process writes."""

    def __init__(
        self,
        config: RunConfig,
        strategy: Any,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        reference: Reference | None,
        job: _Objectives,
        progress: bool,
    ) -> None:
        self.config, self.strategy, self.model, self.tokenizer = config, strategy, model, tokenizer
        self.reference, self.fmt = reference, job.fmt
        self.main = strategy.accelerator.is_main_process
        self.progress = progress and self.main
        keys = config.evaluation.datasets or list(job.data)
        self.sets = {key: job.data[key][: config.evaluation.max_items] for key in keys}
        self.dir = config.run_dir / "eval"
        self.results: dict[str, dict[str, Any]] = {}
        if self.main:
            self.dir.mkdir(exist_ok=True)

    def __call__(self, tag: str, step: int) -> dict[str, Any]:
        config, result = self.config, {}
        if self.main or self.strategy.evaluates_on_every_process:
            result = evaluate_answers(
                self.model,
                self.tokenizer,
                self.sets,
                fmt=self.fmt,
                max_length=config.max_length,
                accuracy=config.evaluation.accuracy,
                max_new_tokens=config.evaluation.max_new_tokens,
                progress=self.progress,
                desc=f"evaluate ({tag})",
            )
            if config.evaluation.suites:
                with _suite_dir(self.dir / f"suites_{tag}", self.main) as out:
                    result["suites"] = _evaluate_suites(
                        config, self.model, self.tokenizer, self.reference, self.fmt, out, self.progress
                    )
            self.model.train()
        if self.main:
            self.results[tag] = result
            atomic_write_text(self.dir / f"{tag}.json", json.dumps(result, indent=2))
            scalars = {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
            self.strategy.accelerator.log(scalars, step=step)
        self.strategy.accelerator.wait_for_everyone()
        return result


def _save_final_model(
    config: RunConfig, strategy: Any, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> Path:
    """The final model as a Hugging Face folder (gathered from the shards under fsdp), written by the main process."""
    from mollm.models.loading import save_model

    accelerator, model_dir = strategy.accelerator, config.run_dir / "model"
    whole = strategy.full_state_dict(model)  # a collective under fsdp: every process takes part
    if accelerator.is_main_process:
        # overwrite: a resumed run replaces its own final model (swapped in atomically, old copy removed after).
        save_model(
            strategy.rebuild_on_main(whole, accelerator.unwrap_model(model)),
            tokenizer,
            model_dir,
            overwrite=True,
            merge_lora=bool(config.lora and config.lora.merge),
        )
    accelerator.wait_for_everyone()
    return model_dir


@contextlib.contextmanager
def _suite_dir(path: Path, main: bool) -> Iterator[Path]:
    """Where suite details go: ``path`` on the main process, a throwaway folder on the others (sharded evaluation)."""
    if main:
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def _evaluate_suites(
    config: RunConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reference: Reference | None,
    fmt: PromptFormat,
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """The configured metric suites (``evaluation.suites``), headline values only; details in ``out_dir``."""
    from mollm.evaluation import evaluate

    suites = {name: s.model_dump(exclude_none=True) for name, s in config.evaluation.suites.items()}
    results = evaluate(
        model,
        suites,
        out_dir,
        cache=False,
        tokenizer=tokenizer,
        reference=reference,
        fmt=fmt,
        max_length=config.max_length,
        max_new_tokens=config.evaluation.max_new_tokens,
        progress=progress,
    )
    model.train()
    flat = {
        f"{suite}/{metric}": r["aggregate"].get("value")
        for suite, metrics in results["suites"].items()
        for metric, r in metrics.items()
    }
    if "model_utility" in results:
        flat["model_utility"] = results["model_utility"]["value"]
    return flat


def _geffect_callback(
    config: RunConfig, job: _Objectives, tokenizer: PreTrainedTokenizerBase, run_dir: Path, device: torch.device
):
    """The G-effect tracker the config asks for (fixed probe batches, so curves over steps are comparable)."""
    g = config.geffect
    if g is None:
        return None
    from mollm.geffect.tracking import GEffectCallback

    def probe(key: str) -> dict[str, torch.Tensor]:
        examples = [encode_record(r, tokenizer, job.fmt, config.max_length) for r in job.data[key][: g.batch_size]]
        return collate(examples, job.pad_id, device)

    forget_key = g.forget or config.objectives[0].data
    retain_key = g.retain or ("retain" if "retain" in job.data else None)
    return GEffectCallback(
        job.tracked,
        probe(forget_key),
        probe(retain_key) if retain_key else None,
        every=g.every,
        out_dir=run_dir,
        per_sample=g.per_sample,
    )


def _named(stats: StepStats) -> dict[str, Any]:
    """Step statistics keyed by objective label (the layout of ``metrics.jsonl``)."""
    d = stats.to_dict()
    names = d["names"]
    out: dict[str, Any] = {key: dict(zip(names, d[key])) for key in ("losses", "grad_norms", "coefficients")}
    out["Gc"] = dict(zip(names, d["decrease"]))
    out["cosines"] = {
        f"{a}|{b}": d["cosines"][i][j]
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if i < j and d["cosines"]
    }
    out.update(conflict=d["conflict"], direction_norm=d["direction_norm"], finite=d["finite"], seconds=d["seconds"])
    if not d["finite"]:
        out.update(bad_objective=d["bad_objective"], reason=d["reason"])
    return out


def _aggregator_options(config: RunConfig) -> dict[str, Any]:
    opts = dict(config.aggregator.options)
    if config.aggregator.name == "linear" and "weights" not in opts:
        opts["weights"] = [o.weight for o in config.objectives]
    return opts


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}/{sub}"] = float(v)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def iter_metrics(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Read a run's ``metrics.jsonl`` line by line."""
    with (Path(run_dir) / "metrics.jsonl").open() as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
