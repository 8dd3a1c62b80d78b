"""MOLLM inside a Hugging Face ``Trainer`` pipeline: :class:`MultiObjectiveTrainer`.

An open-unlearning-style trainer overrides ``compute_loss`` to return one summed loss (GradDiff:
``-nll(forget) + nll(retain)``) and lets the ``Trainer`` backpropagate it. :class:`MultiObjectiveTrainer` replaces that
with mollm's step: each objective is backpropagated on its own batch, the aggregator turns the objectives' Gramian into
coefficients c, and the optimizer steps along d = Σ c_i g_i. Everything else stays the ``Trainer``'s — its optimizer
and schedule, logging and callbacks, checkpoints and resuming, evaluation::

    trainer = MultiObjectiveTrainer(
        model=model,
        args=TrainingArguments("out", max_steps=100, learning_rate=1e-5, lr_scheduler_type="constant"),
        processing_class=tokenizer,
        objectives={"forget": ("uce", forget_records), "retain": ("nll", retain_dataset)},
        aggregator="ds_mgda",
    )
    trainer.train()

Batches follow the optimizer step, as in ``mollm unlearn``: objective i's batch at step s depends only on (seed, i,
s) (a :class:`mollm.engine.plan.Sampler`), so the same records, seed and optimizer settings reach the weights of the
``mollm unlearn`` run (the tests check it), and a resumed run the weights of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer

from mollm.core.device import model_device, to_device
from mollm.core.errors import ConfigError, DataError
from mollm.core.tokens import IGNORE_INDEX
from mollm.data.encode import PromptFormat
from mollm.data.records import QARecord
from mollm.engine.metrics_log import scalar_metrics, step_metrics
from mollm.engine.plan import Sampler, encode_records, sampler_seed
from mollm.engine.step import MultiObjectiveStep, StepStats, trainable_parameters
from mollm.models.reference import Reference

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainingArguments

__all__ = ["AGGREGATOR_STATE_FILE", "MultiObjectiveTrainer", "ObjectiveSpec"]

log = logging.getLogger("mollm")

AGGREGATOR_STATE_FILE = "mollm_aggregator.pt"  # in each checkpoint-N folder, for aggregators with a state_dict()


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective of a :class:`MultiObjectiveTrainer`: what it minimises, on which data, in batches of what size.

    Attributes:
        loss: a registered objective's name (``"uce"``, ``"ga"``, ``"nll"``, ``"kl"``, ``"npo"``, ... —
            ``mollm list``) or an objective object: ``mollm.objectives.get("uce", eps=0.3)`` or any callable
            ``(model, batch, reference) -> scalar loss`` (its ``needs_reference`` attribute is read when present).
        data: question-answer records (a list of :class:`~mollm.data.records.QARecord`, encoded with the trainer's
            ``processing_class``); tokenized examples (a ``datasets.Dataset`` or a list of mappings with
            ``input_ids`` and optionally ``attention_mask`` and ``labels``; without ``labels`` every attended token
            is a label); or a batch provider, any object whose ``batch(i)`` returns the i-th batch, such as a
            :class:`mollm.engine.plan.Sampler` (the one ``mollm unlearn`` would use).
        options: the objective's options when ``loss`` is a name, e.g. ``{"eps": 0.5}``.
        batch_size: examples per batch of this objective (per micro-batch under gradient accumulation); default
            ``args.per_device_train_batch_size``. A batch provider makes its own batches and takes none.
    """

    loss: str | Callable[..., torch.Tensor]
    data: Any
    options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None


@dataclass
class _Objective:
    label: str
    fn: Callable[..., torch.Tensor]
    provider: Any  # .batch(i) -> batch; a Sampler when built here
    needs_reference: bool


class _StepSlots(Dataset):
    """The ``Trainer``'s train dataset: one slot per micro-batch of an epoch. The batches themselves are drawn from
    the objectives' samplers by optimizer step, so the slots only pace the ``Trainer``'s loop (epochs, max_steps)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return {"mollm_slot": torch.tensor(index)}


class MultiObjectiveTrainer(Trainer):
    """A ``transformers.Trainer`` whose training step is mollm's multi-objective step.

    ``training_step`` draws one batch per objective, backpropagates each objective separately
    (:class:`~mollm.engine.step.MultiObjectiveStep`), asks the aggregator for coefficients c from the Gramian of the
    objectives' gradients and leaves d = Σ c_i g_i in ``.grad``; the ``Trainer`` then steps its optimizer and schedule
    as usual. The loss it reports is Σ c_i L_i (the loss whose gradient is d).

    Args:
        model, args: as for ``Trainer`` (everything after them is keyword-only). Any other ``Trainer`` argument
            (``processing_class``, ``eval_dataset``, ``callbacks``, ``optimizers``, ``compute_metrics``, ...) is
            passed on; ``data_collator`` and ``compute_loss_func`` then serve evaluation only. ``train_dataset`` is
            refused: the objectives bring the training data.
        objectives: label -> objective, in order: an :class:`ObjectiveSpec`, a tuple ``(loss, data)`` or ``(loss,
            data, options)``, or a mapping with ObjectiveSpec's fields. The first objective's data define an
            epoch (one pass over them, as in ``mollm unlearn``).
        aggregator: a registered aggregator's name (``"ds_mgda"``, ``"mgda"``, ``"linear"``, ``"pcgrad"``,
            ``"cagrad"``, ``"upgrad"``), or an aggregator object (``mollm.aggregators.get(...)`` or any callable mapping
            the (m, m) Gramian to m coefficients).
        aggregator_options: options of a named aggregator (``{"preference": [2, 1, 1]}``).
        reference: the frozen reference model for objectives that need one (``kl``, ``npo``, ...); default a frozen
            copy of ``model`` taken here, before any training (the adapter-disabled model under LoRA). Resuming a run
            therefore needs the trainer built from the original model, as ``Trainer`` resuming does anyway.
        prompt_format, max_length: how question-answer records are encoded (mollm's defaults: the plain
            ``### Question: ... ### Answer:`` template, 256 tokens).
        max_bad_steps: stop after this many non-finite steps in a row (a non-finite step leaves no gradient, so the
            optimizer does not move; the schedule still advances, as the ``Trainer`` steps it).

    Batches: objective i's k-th batch is drawn by a :class:`~mollm.engine.plan.Sampler` seeded from
    ``args.data_seed`` (else ``args.seed``) and i exactly as ``mollm unlearn`` seeds it, and step s (the ``Trainer``'s
    ``global_step``) uses batch s. So the same data, seed and optimizer settings give the weights of the ``mollm
    unlearn`` run, and a resumed run sees the batches an uninterrupted one would (``ignore_data_skip`` has no effect).
    Objectives ``idk`` and ``mismatch`` transform their records as in a run (``mismatch`` draws answers from the
    objective labelled ``normal``, else ``retain``).

    ``TrainingArguments`` that work: ``max_steps`` / ``num_train_epochs``, the optimizer and schedule settings
    (``learning_rate``, ``adam_*``, ``weight_decay``, ``lr_scheduler_type``, warm-up), ``max_grad_norm`` (the step
    clips d itself, with ``clip_grad_norm_``'s rule on ‖d‖ = sqrt(cᵀGc), and reports ‖d‖ before clipping as
    ``grad_norm``), ``logging_steps`` (each log also holds the step statistics averaged over the logging interval:
    ``losses/<label>``, ``grad_norms/<label>``, ``coefficients/<label>``, ``Gc/<label>`` (the first-order decrease
    (G c)_i), ``cosines/<a>|<b>``, ``conflict`` (the fraction of steps where some (G c)_i < 0),
    ``direction_norm``, ``skipped_steps``; :attr:`step_records` keeps every step in ``metrics.jsonl``'s layout),
    ``save_steps`` / ``save_total_limit`` and ``train(resume_from_checkpoint=...)`` (the aggregator's state is saved
    in each checkpoint as ``mollm_aggregator.pt`` when it has ``state_dict()`` / ``load_state_dict()``),
    ``bf16`` (accelerate's autocast of the forward passes), evaluation with ``eval_dataset``, ``seed`` /
    ``data_seed``, ``include_num_input_tokens_seen`` (the objectives' batches are counted).

    Gradient accumulation is supported and exact: with ``gradient_accumulation_steps`` = k the step draws k
    micro-batches per objective (batches k·s … k·s + k − 1, together exactly the batch of k× the batch size at step
    s), backpropagates them one at a time into that objective's gradient row, each scaled by 1/k, and forms the
    Gramian, coefficients and clipping once per optimizer step from the accumulated gradients. That is the step on
    the k× larger batch for losses that are means over samples (all of mollm's, save ``rmu`` / ``rmu_retain``, whose
    mean runs over tokens: there each micro-batch weighs the same, as in a plain ``Trainer``). Accumulating
    *per-micro-batch* MOLLM directions instead would not be: coefficients are not linear in the gradients.

    Refused (clear errors): ``fp16`` (the loss scaling would rescale every objective's gradient differently from
    step to step; use ``bf16``), and more than one process or GPU (DDP, FSDP, DeepSpeed, DataParallel) — the
    ``Trainer``'s wrappers would reduce or shard each objective's gradient in ways this step does not yet account
    for; run ``mollm unlearn`` under ``torchrun`` for that.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        *,
        objectives: Mapping[str, ObjectiveSpec | tuple | Mapping[str, Any]],
        aggregator: str | Callable[[torch.Tensor], torch.Tensor] = "ds_mgda",
        aggregator_options: Mapping[str, Any] | None = None,
        reference: Reference | None = None,
        prompt_format: PromptFormat | None = None,
        max_length: int = 256,
        max_bad_steps: int = 3,
        **trainer_kwargs: Any,
    ) -> None:
        if trainer_kwargs.get("train_dataset") is not None:
            raise TypeError(
                "MultiObjectiveTrainer: train_dataset is not used; give each objective its data in "
                "objectives={'forget': ('uce', forget_data), 'retain': ('nll', retain_data)}"
            )
        trainer_kwargs.pop("train_dataset", None)
        if not isinstance(objectives, Mapping) or not objectives:
            raise TypeError("MultiObjectiveTrainer: objectives must be a non-empty mapping label -> (loss, data)")
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps: expected a positive integer, got {max_bad_steps}")
        super().__init__(model=model, args=args, **trainer_kwargs)
        self._refuse_unsupported()

        self.max_bad_steps = max_bad_steps
        self.aggregator = _aggregator(aggregator, aggregator_options, len(objectives), self.args.seed)
        self.objective_names = [str(label) for label in objectives]
        self._objectives = self._build_objectives(objectives, prompt_format or PromptFormat(), max_length)
        if reference is not None and not isinstance(reference, Reference):
            raise TypeError(f"reference: expected a mollm Reference (Reference.from_model(m)), got {type(reference)}")
        if reference is None and any(o.needs_reference for o in self._objectives):
            reference = Reference.from_model(self.model)  # the model as given, before any training or resume
        self.reference = reference
        self.train_dataset = _StepSlots(self._slots_per_epoch())

        # The step clips d from the Gramian; the Trainer's own clipping (a hook of transformers >= 5) then only
        # reports ‖d‖. Without that hook the Trainer clips with the same rule and the step leaves d unclipped.
        self._clips_in_step = callable(getattr(Trainer, "_clip_grad_norm", None)) and callable(
            getattr(Trainer, "_get_grad_norm", None)
        )
        self._step: MultiObjectiveStep | None = None
        self._step_model: torch.nn.Module | None = None
        self._last_stats: StepStats | None = None
        self._step_batches: list[dict[str, torch.Tensor]] = []
        self._pending: list[dict[str, float]] = []  # scalar statistics of the steps since the last log
        self._bad_in_row = 0
        self.step_records: list[dict[str, Any]] = []  # one per step, in the layout of a run's metrics.jsonl

    # ---- set-up -------------------------------------------------------------------------------------------------

    def _refuse_unsupported(self) -> None:
        args = self.args
        if args.fp16:
            raise ValueError(
                "MultiObjectiveTrainer: fp16 is not supported (its loss scaling would rescale every objective's "
                "gradient row differently from step to step); use bf16=True or full precision"
            )
        many = args.world_size > 1 or args.n_gpu > 1
        if many or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "MultiObjectiveTrainer: one process on one device only (got "
                f"world_size={args.world_size}, n_gpu={args.n_gpu}, deepspeed={self.is_deepspeed_enabled}, "
                f"fsdp={self.is_fsdp_enabled}): the Trainer's DDP/FSDP/DeepSpeed/DataParallel wrappers would reduce or "
                "shard each objective's gradient without the step knowing. For several GPUs run `mollm unlearn` "
                "under torchrun or accelerate launch (config.distributed: ddp or fsdp)"
            )

    def _build_objectives(
        self, objectives: Mapping[str, Any], fmt: PromptFormat, max_length: int
    ) -> list[_Objective]:
        from mollm.objectives import get as get_objective
        from mollm.objectives import prepare_records
        from mollm.objectives.registry import OBJECTIVES

        problems: list[str] = []
        specs: list[ObjectiveSpec | None] = []
        for label, value in objectives.items():
            spec = _spec(str(label), value, problems)
            if spec is not None and spec.batch_size is not None and not (
                isinstance(spec.batch_size, int) and spec.batch_size > 0
            ):
                problems.append(f"objectives.{label}: batch_size must be a positive integer, got {spec.batch_size!r}")
                spec = None
            specs.append(spec)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        tokenizer = self.processing_class
        pad_id = _pad_id(tokenizer, self.model)
        records = {label: s.data for label, s in zip(self.objective_names, specs) if s is not None and _is_records(s.data)}
        normal = records.get("normal") or records.get("retain")

        out: list[_Objective] = []
        for i, (label, spec) in enumerate(zip(self.objective_names, specs)):
            if spec is None:
                continue
            where = f"objectives.{label}"
            if isinstance(spec.loss, str):
                found = OBJECTIVES.check(spec.loss, dict(spec.options))
                if found:
                    problems += [f"{where}: {p}" for p in found]
                    continue
                fn = get_objective(spec.loss, **dict(spec.options))
            elif callable(spec.loss):
                if spec.options:
                    problems.append(f"{where}: options are for a named loss; this one is an object already built")
                    continue
                fn = spec.loss
            else:
                problems.append(f"{where}: loss must be an objective name or a callable, got {type(spec.loss).__name__}")
                continue
            batch_size = spec.batch_size or self.args.per_device_train_batch_size
            data = spec.data
            if _is_provider(data):
                if spec.batch_size is not None and spec.batch_size != getattr(data, "batch_size", spec.batch_size):
                    problems.append(f"{where}: batch_size={spec.batch_size} given, but the sampler makes batches of "
                                    f"{data.batch_size}")
                    continue
                provider = data
            else:
                if _is_records(data):
                    if tokenizer is None:
                        problems.append(f"{where}: question-answer records need a tokenizer: pass processing_class=")
                        continue
                    try:
                        prepared = prepare_records(fn, data, normal=normal, refusals=None, rng=random.Random(seed + i))
                    except ValueError as err:
                        problems.append(f"{where}: {err}")
                        continue
                    examples = encode_records(prepared, tokenizer, fmt, max_length, where, problems)
                else:
                    try:
                        examples = _tokenized(data, where)
                    except (DataError, TypeError) as err:
                        problems.append(str(err))
                        continue
                if not examples:
                    problems.append(f"{where}: no examples to train on")
                    continue
                provider = Sampler(examples, batch_size, sampler_seed(seed, i), pad_id)
            out.append(_Objective(label, fn, provider, bool(getattr(fn, "needs_reference", False))))
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise ConfigError(f"MultiObjectiveTrainer: {len(problems)} problem(s):\n{lines}")
        return out

    def _slots_per_epoch(self) -> int:
        """Micro-batches per epoch: one pass over the first objective's examples, in whole optimizer steps."""
        k = self.args.gradient_accumulation_steps
        first = self._objectives[0].provider
        examples, batch_size = getattr(first, "examples", None), getattr(first, "batch_size", None)
        if examples is None or not batch_size:
            if self.args.max_steps <= 0:
                raise ConfigError(
                    f"MultiObjectiveTrainer: objective '{self._objectives[0].label}' is a batch provider without "
                    "examples/batch_size, so an epoch is undefined: set TrainingArguments(max_steps=...)"
                )
            return self.args.max_steps * k
        return max(1, math.ceil(len(examples) / (batch_size * k))) * k

    def get_train_dataloader(self) -> DataLoader:
        """The slots in order (no shuffling, no sharding): they only pace the loop; batches come from the samplers."""
        return DataLoader(self.train_dataset, batch_size=1, shuffle=False)

    # ---- the step -----------------------------------------------------------------------------------------------

    def _multi_objective_step(self) -> MultiObjectiveStep:
        if self._step is None or self._step_model is not self.model:  # model_init may replace the model in train()
            clip = self.args.max_grad_norm
            max_norm = clip if self._clips_in_step and clip is not None and clip > 0 else None
            self._step = MultiObjectiveStep(self.model, self.aggregator, names=self.objective_names, max_norm=max_norm)
            self._step_model = self.model
        return self._step

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One multi-objective step, run on the last micro-batch of an optimizer step (the earlier ones return 0:
        the step draws and accumulates all k micro-batches of every objective itself)."""
        self._step_batches = []
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        k = self.args.gradient_accumulation_steps
        first = self.state.global_step * k
        micro = [[o.provider.batch(first + j) for j in range(k)] for o in self._objectives]
        step = self._multi_objective_step()
        params = trainable_parameters(self.model)
        device = model_device(model)
        micro = [[to_device(b, device) for b in batches] for batches in micro]
        self._step_batches = [b for batches in micro for b in batches]
        closures = [_closure(o.fn, model, b, self.reference, params) for o, b in zip(self._objectives, micro)]
        stats = step(closures)
        self._record(stats)
        if not stats.finite:
            return torch.tensor(float("nan"), device=self.args.device)
        loss = sum(c * v for c, v in zip(stats.coefficients, stats.losses) if v is not None)
        return torch.tensor(float(loss), device=self.args.device)

    def _record(self, stats: StepStats) -> None:
        self._last_stats = stats
        record: dict[str, Any] = {"step": self.state.global_step + 1, "lr": self._get_learning_rate()}
        record.update(step_metrics(stats))
        if not stats.finite:
            record["skipped"] = True
            self._bad_in_row += 1
            log.warning("step %d: non-finite loss or gradient (%s); step skipped", record["step"], stats.reason)
            if self._bad_in_row >= self.max_bad_steps:
                log.error("stopping: %d non-finite steps in a row", self._bad_in_row)
                self.control.should_training_stop = True
        else:
            self._bad_in_row = 0
            if self._step is not None and self._step.max_norm is not None:
                record["clipped_norm"] = stats.direction_norm  # ‖d‖ before clipping, as in a run's metrics.jsonl
        self.step_records.append(record)
        self._pending.append(scalar_metrics({k: v for k, v in record.items() if k not in ("step", "lr")}))

    def _reported_norm(self) -> float:
        stats = self._last_stats
        return stats.direction_norm if stats is not None and stats.finite else float("nan")

    def _clip_grad_norm(self, model: torch.nn.Module) -> Any:
        """The step clipped d already (``max_grad_norm``); report ‖d‖ before clipping, as ``clip_grad_norm_`` does."""
        if not self._clips_in_step:
            return super()._clip_grad_norm(model)
        return self._reported_norm()

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        if grad_norm is None and self._clips_in_step:
            grad_norm = self._reported_norm()  # from the Gramian: no pass over the gradients
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def floating_point_ops(self, inputs: dict[str, torch.Tensor | Any]) -> int:
        """The ``Trainer``'s estimate summed over the step's batches (the slot it was handed holds no tokens)."""
        return sum(int(super(MultiObjectiveTrainer, self).floating_point_ops(b)) for b in self._step_batches)

    def _track_num_input_tokens(self, inputs: dict[str, torch.Tensor | Any]) -> None:
        track = getattr(super(), "_track_num_input_tokens", None)
        if track is None or self.args.include_num_input_tokens_seen in ("no", False):
            return
        for batch in self._step_batches:
            track(batch)

    # ---- logging ------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The ``Trainer``'s training logs (those with ``loss``) also get the step statistics since the last one."""
        if "loss" in logs and self._pending:
            logs = {**logs, **_interval_summary(self._pending)}
            self._pending = []
        super().log(logs, *args, **kwargs)

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        state_dict = getattr(self.aggregator, "state_dict", None)
        if callable(state_dict) and self.args.should_save:
            torch.save(state_dict(), os.path.join(output_dir, AGGREGATOR_STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, AGGREGATOR_STATE_FILE)
        load_state_dict = getattr(self.aggregator, "load_state_dict", None)
        if callable(load_state_dict):
            if os.path.isfile(path):
                load_state_dict(torch.load(path, weights_only=True))
            else:
                log.warning("%s: no %s; the aggregator resumes from its initial state", checkpoint, AGGREGATOR_STATE_FILE)
        elif os.path.isfile(path):
            log.warning("%s: %s ignored (this aggregator has no load_state_dict)", checkpoint, AGGREGATOR_STATE_FILE)


# ---- helpers ------------------------------------------------------------------------------------------------------


def _spec(label: str, value: Any, problems: list[str]) -> ObjectiveSpec | None:
    where = f"objectives.{label}"
    if isinstance(value, ObjectiveSpec):
        return value
    if isinstance(value, tuple) and len(value) in (2, 3):
        options = value[2] if len(value) == 3 else {}
        if not isinstance(options, Mapping):
            problems.append(f"{where}: the third element of (loss, data, options) must be a mapping, got {options!r}")
            return None
        return ObjectiveSpec(value[0], value[1], options)
    if isinstance(value, Mapping):
        try:
            return ObjectiveSpec(**value)
        except TypeError as err:
            problems.append(f"{where}: {err} (fields: loss, data, options, batch_size)")
            return None
    problems.append(f"{where}: expected (loss, data), (loss, data, options), an ObjectiveSpec or a mapping, "
                    f"got {type(value).__name__}")
    return None


def _aggregator(
    aggregator: Any, options: Mapping[str, Any] | None, m: int, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(aggregator, str):
        from mollm.aggregators import get as get_aggregator
        from mollm.aggregators import seeded_options

        opts = seeded_options(aggregator, options or {}, seed)  # pcgrad's order follows TrainingArguments.seed
        for key in ("preference", "weights"):
            if isinstance(opts.get(key), (list, tuple)) and len(opts[key]) != m:
                raise ConfigError(f"aggregator: option '{key}' has {len(opts[key])} values but there are {m} objectives")
        return get_aggregator(aggregator, **opts)
    if not callable(aggregator):
        raise TypeError(f"aggregator: expected a name or a callable Gramian -> coefficients, got {type(aggregator)}")
    if options:
        raise TypeError("aggregator_options are for a named aggregator; this one is an object already built")
    return aggregator


def _is_provider(data: Any) -> bool:
    """A Sampler, or any object with ``batch(i)`` that is not itself a collection of rows (``datasets.Dataset`` has a
    ``batch`` method too, but it is iterable)."""
    return isinstance(data, Sampler) or (callable(getattr(data, "batch", None)) and not hasattr(data, "__iter__"))


def _is_records(data: Any) -> bool:
    return isinstance(data, Sequence) and len(data) > 0 and all(isinstance(r, QARecord) for r in data)


def _pad_id(tokenizer: PreTrainedTokenizerBase | None, model: torch.nn.Module) -> int:
    """Padding only fills positions masked out of attention and labels; any id the model knows will do."""
    for source in (tokenizer, getattr(model, "config", None)):
        for key in ("pad_token_id", "eos_token_id"):
            value = getattr(source, key, None)
            if isinstance(value, int):
                return value
    return 0


def _ints(value: Any, where: str) -> list[int]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise DataError(f"{where}: expected a flat list of token ids, got {type(value).__name__}")
    return list(value)


def _tokenized(rows: Any, where: str) -> list[dict[str, list[int]]]:
    """Tokenized examples (a ``datasets.Dataset`` or mappings) as mollm examples: input_ids, attention_mask, labels."""
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise TypeError(f"{where}: expected records, tokenized examples or a batch provider, got {type(rows).__name__}")
    out = []
    for k, row in enumerate(rows):
        at = f"{where}: example {k}"
        if isinstance(row, QARecord):
            raise DataError(f"{at}: a QARecord among other rows (give a list of records only, or tokenized rows only)")
        if not isinstance(row, Mapping) or "input_ids" not in row:
            keys = ", ".join(map(str, row)) if isinstance(row, Mapping) else type(row).__name__
            raise DataError(f"{at}: expected a mapping with 'input_ids' (and optionally 'attention_mask', 'labels'), "
                            f"got {keys}")
        ids = _ints(row["input_ids"], f"{at}: input_ids")
        mask = _ints(row["attention_mask"], f"{at}: attention_mask") if row.get("attention_mask") is not None else [1] * len(ids)
        if row.get("labels") is not None:
            labels = _ints(row["labels"], f"{at}: labels")
        else:
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        if not ids or not len(ids) == len(mask) == len(labels):
            raise DataError(f"{at}: input_ids, attention_mask and labels must be non-empty and of one length, got "
                            f"{len(ids)}, {len(mask)}, {len(labels)}")
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _closure(
    objective: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
    reference: Reference | None,
    params: list[torch.nn.Parameter],
) -> Callable[[], torch.Tensor]:
    """Objective i's loss for the step. With k micro-batches, the first k − 1 are backpropagated here (scaled by 1/k)
    into the row the step has bound ``.grad`` to, and the returned loss — the last micro-batch's share, plus the
    others' values detached — makes the step's own backward add the rest: the row ends up holding the gradient of
    the mean loss, and the reported loss is the mean."""
    if len(batches) == 1:
        batch = batches[0]
        return lambda: objective(model, batch, reference)
    k = len(batches)

    def accumulated() -> torch.Tensor:
        earlier = torch.zeros(())
        for batch in batches[:-1]:
            loss = objective(model, batch, reference) / k
            loss.backward(inputs=params)
            earlier = earlier.to(loss.device) + loss.detach()
            del loss
        return objective(model, batches[-1], reference) / k + earlier

    return accumulated


def _interval_summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each statistic over the steps that have it; ``conflict`` becomes the fraction of steps with one."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        if key == "finite":
            continue
        values = [row[key] for row in rows if key in row]
        out["step_seconds" if key == "seconds" else key] = sum(values) / len(values)
    out["skipped_steps"] = float(sum(1 for row in rows if not row.get("finite", 1.0)))
    return out
