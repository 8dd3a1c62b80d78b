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
from mollm.core.outputs import ClaimedOutput, OutputExistsError, claim_output
from mollm.engine import checkpoints
from mollm.engine.config import RunConfig, dump_config
from mollm.engine.distributed import describe, make_strategy
from mollm.engine.metrics_log import METRICS_FILE, append_step, scalar_metrics, step_metrics, truncate_metrics
from mollm.engine.plan import RunHooks, RunPlan, RunSetup, build_plan

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mollm.engine.step import StepStats
    from mollm.models.reference import Reference

log = logging.getLogger("mollm")
_STALLED = 1e-4  # ‖d‖ below this fraction of the largest gradient norm: the aggregator found no descent direction


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
        return self.run_dir / METRICS_FILE


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


def _fused_adamw_applies(params: list[torch.nn.Parameter]) -> bool:
    """AdamW's fused kernel fits: unsharded (not FSDP2 DTensor) floating-point weights on CPU or CUDA devices."""
    from mollm.engine.step import _is_shard

    return bool(params) and all(
        not _is_shard(p) and p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def _optimizer(params: list[torch.nn.Parameter], config: RunConfig) -> torch.optim.Optimizer:
    o = config.optimizer
    if o.name == "adamw":
        fused = _fused_adamw_applies(params) if o.fused is None else o.fused
        # fused=None (not False) otherwise: torch then picks its default (foreach on CUDA, a loop on CPU).
        return torch.optim.AdamW(
            params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, fused=True if fused else None
        )
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)


def _from_main(accelerator: Accelerator, value: Any) -> Any:
    """The main process's ``value`` (a decision, a step, an error), known to every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _build_model(
    config: RunConfig, model: torch.nn.Module | None, tokenizer: PreTrainedTokenizerBase
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The model to train, on the host: loaded from ``config.model`` unless given, with checkpointing and LoRA."""
    from mollm.engine.checkpoints import load_model_or_checkpoint as load_model

    dtype = getattr(torch, config.dtype)
    if model is None:
        model, _ = load_model(config.model, dtype=dtype)  # the plan's tokenizer is the same one, already checked
    elif any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)  # a model object given directly still trains in the configured dtype
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
    hooks: RunHooks,
    *,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run unlearning or fine-tuning as ``config`` says and return what it produced.

    Everything but the weights is checked first (:func:`~mollm.engine.plan.build_plan`: one error listing every
    problem, before the run directory is touched or a weight is loaded). ``hooks`` evaluate and track G-effects
    (:mod:`mollm.runs` gives the real ones; use ``mollm.unlearn``). ``model``/``tokenizer`` may be given directly (e.g.
    a tiny test model); otherwise ``config.model`` is loaded. Under ``torchrun`` / ``accelerate launch`` every process
    calls this; ``config.distributed`` picks DDP or FSDP2.
    """
    precision = _mixed_precision(config)
    config = config.model_copy(update={"mixed_precision": precision})  # config.yaml records what was used
    plan = build_plan(config, hooks, tokenizer=tokenizer, model_given=model is not None)
    accelerator = _accelerator(config)
    strategy = make_strategy(accelerator, config.distributed.strategy, precision, config.distributed.shard_size)
    claim, error = None, None
    if accelerator.is_main_process:  # it alone touches the run directory; every process learns its error
        try:
            claim = claim_output(config.run_dir, overwrite=config.overwrite, resume=config.resume, what="run")
        except OutputExistsError as err:
            error = RunError(str(err))
    _raise_from_main(accelerator, error)
    with claim or contextlib.nullcontext():
        return _train(config, hooks, plan, strategy, claim, model, progress, on_step)


def _train(
    config: RunConfig,
    hooks: RunHooks,
    plan: RunPlan,
    strategy: Any,
    claim: ClaimedOutput | None,
    model: torch.nn.Module | None,
    progress: bool,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> RunResult:
    from mollm.engine.step import MultiObjectiveStep, objective_closures, trainable_parameters

    accelerator = strategy.accelerator
    world, rank, main = strategy.world, strategy.rank, accelerator.is_main_process
    run_dir = config.run_dir
    start_step = _from_main(accelerator, checkpoints.latest_step(run_dir) if main and config.resume else 0)
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
    set_seed(config.seed)
    model, tokenizer = _build_model(config, model, plan.tokenizer)
    plan.to(strategy.device)
    setup = RunSetup(config, plan, run_dir, strategy.device)
    total = _total_steps(config, [len(s.examples) for s in plan.samplers], world)

    needs_reference = plan.needs_reference or hooks.needs_reference(config)
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
        plan.aggregator,
        names=plan.labels,
        reduction=strategy.reduction,
        grad_dtype=getattr(torch, config.grad_dtype) if config.grad_dtype else None,
        max_norm=config.grad_clip,
    )

    metrics_path = run_dir / METRICS_FILE
    if start_step:
        path = run_dir / "checkpoints" / f"step_{start_step}"
        checkpoints.load(strategy, path, model, optimizer, scheduler, plan.aggregator)
    if config.resume and main:  # the log then matches an uninterrupted run (all of it goes when no checkpoint was)
        truncate_metrics(metrics_path, start_step)
        truncate_metrics(run_dir / "geffect.jsonl", start_step)
    tracker = hooks.tracker(setup) if main else None
    evaluate = _Evaluator(hooks, setup, strategy, model, reference, progress)
    if config.evaluation.before and start_step == 0:
        evaluate("before", start_step)

    status, bad_in_row, history, step = "completed", 0, [], start_step
    t0 = time.time()
    bar = tqdm(total=total, initial=start_step, desc=config.mode, disable=not (progress and main), unit="step")
    for step in range(start_step + 1, total + 1):
        batches = [s.batch((step - 1) * world + rank) for s in plan.samplers]
        closures = objective_closures(model, plan.objectives, batches, reference)
        stats = step_fn(_autocast(config.mixed_precision, strategy.device, closures))
        record = {"step": step, "lr": scheduler.get_last_lr()[0], **step_metrics(stats)}
        bad_in_row = 0 if _update(stats, record, optimizer, scheduler, config) else bad_in_row + 1
        if bad_in_row >= config.max_bad_steps:
            status = f"stopped: {bad_in_row} non-finite steps in a row"
        if main:
            append_step(metrics_path, record)
        if claim is not None:
            claim.started()  # the first step is on disk: a run this one replaces can go now
        history.append(record)
        if step % config.log_every == 0:
            accelerator.log(scalar_metrics(record), step=step)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in record["losses"].items() if v is not None})
        if on_step is not None:
            on_step(step, record)
        if status != "completed":
            break
        if tracker is not None:
            tracker(step, model, reference)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
            checkpoints.save(
                strategy, run_dir, step, config.keep_checkpoints, model, optimizer, scheduler, plan.aggregator
            )
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


def _raise_from_main(accelerator: Accelerator, error: Exception | None) -> None:
    """Raise the main process's error on every process (so none waits for a run that will not start)."""
    error = _from_main(accelerator, error)
    if error is not None:
        raise error


def _update(stats: StepStats, record: dict[str, Any], optimizer: Any, scheduler: Any, config: RunConfig) -> bool:
    """Step the optimizer on a finite step; skip (and log) a non-finite one. Returns whether the step was taken."""
    if not stats.finite:
        record["skipped"] = True
        log.warning("step %d: non-finite loss or gradient (%s); step skipped", record["step"], stats.reason)
        optimizer.zero_grad(set_to_none=True)
        return False
    largest = max(stats.grad_norms, default=0.0)
    if largest > 0 and stats.direction_norm <= _STALLED * largest:
        # Not an error (the point is Pareto-stationary for the aggregator) but a run that does not move: say why.
        log.warning(
            "step %d: the aggregated direction is ~0 (norm %.2g, largest gradient norm %.2g): no common descent "
            "direction here; with `mgda`, one objective with a zero gradient (KL at its reference, as at step 1) "
            "makes it 0", record["step"], stats.direction_norm, largest,
        )
    if config.grad_clip is not None:
        record["clipped_norm"] = stats.direction_norm  # ‖d‖ before clipping (the step clipped), as clip_grad_norm_
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # bf16 rows: frees the float32 copy before the next forward
    scheduler.step()
    return True


class _Evaluator:
    """The in-run evaluation at a tag (before, step_N, after), done by the run's hooks.

    Whole weights are the same on every process, so the main one evaluates while the others wait; sharded weights need
    every process in each forward pass, so all evaluate in step. Only the main process writes."""

    def __init__(
        self,
        hooks: RunHooks,
        setup: RunSetup,
        strategy: Any,
        model: torch.nn.Module,
        reference: Reference | None,
        progress: bool,
    ) -> None:
        self.hooks, self.setup, self.strategy, self.model, self.reference = hooks, setup, strategy, model, reference
        self.main = strategy.accelerator.is_main_process
        self.progress = progress and self.main
        self.dir = setup.run_dir / "eval"
        self.results: dict[str, dict[str, Any]] = {}
        if self.main:
            self.dir.mkdir(exist_ok=True)

    def __call__(self, tag: str, step: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.main or self.strategy.evaluates_on_every_process:
            with _scratch_dir(self.dir / f"suites_{tag}", self.main) as out:
                result = self.hooks.evaluate(self.setup, self.model, self.reference, tag, out, self.progress)
            self.model.train()
        if self.main:
            self.results[tag] = result
            atomic_write_text(self.dir / f"{tag}.json", json.dumps(result, indent=2))
            scalars = {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
            self.strategy.accelerator.log(scalars, step=step)
        self.strategy.accelerator.wait_for_everyone()
        return result


@contextlib.contextmanager
def _scratch_dir(path: Path, main: bool) -> Iterator[Path]:
    """Where evaluation details go: ``path`` on the main process, a throwaway folder on the others (sharded runs)."""
    if main:
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


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
