"""Everything a run needs except the model's weights, built and checked before anything is written or loaded.

:func:`build_plan` resolves the model spec and loads its tokenizer, reads every data set, checks every objective's and
the aggregator's options, encodes every training record (an answer cut away by ``max_length`` is found here) and asks
the run's :class:`RunHooks` (evaluation, G-effect tracking) for their problems too. Every problem found is reported
in one :class:`~mollm.core.errors.ConfigError`, one line each, so a user fixes them all in one go.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mollm.core.errors import ConfigError, DataError
from mollm.data.encode import PromptFormat, collate, encode_many
from mollm.data.records import QARecord
from mollm.engine.config import RunConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mollm.models.reference import Reference

_MAX_RECORD_PROBLEMS = 5  # per data set: enough to see the pattern without flooding the terminal


@dataclass
class RunSetup:
    """What the hooks see once the run is set up: its plan, where it writes and the device its batches go to."""

    config: RunConfig
    plan: RunPlan
    run_dir: Path
    device: torch.device


class RunHooks:
    """The work a run hands to the layers above the engine — evaluation and G-effect tracking — so the loop stays
    free of them. The base class does neither; :mod:`mollm.runs` gives the real ones."""

    evaluates: bool = False
    tracks: bool = False

    def problems(self, config: RunConfig) -> list[str]:
        """Problems with the parts of ``config`` these hooks own (checked before anything is touched)."""
        return []

    def needs_reference(self, config: RunConfig) -> bool:
        """Whether the evaluation uses the reference (original) model, which must then be kept."""
        return False

    def evaluate(
        self,
        setup: RunSetup,
        model: torch.nn.Module,
        reference: Reference | None,
        tag: str,
        out_dir: Path,
        progress: bool,
    ) -> dict[str, Any]:
        """The in-run evaluation at ``tag`` (``before``, ``step_N``, ``after``): flat numbers plus details."""
        return {}

    def tracker(self, setup: RunSetup) -> Callable[[int, torch.nn.Module, Reference | None], None] | None:
        """A callback run after every step (G-effect tracking), or None."""
        return None


class Sampler:
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


def sampler_seed(seed: int, index: int) -> int:
    """The seed of objective ``index``'s batches in a run seeded ``seed`` (each objective shuffles its own way)."""
    return seed + 7919 * (index + 1)


@dataclass
class RunPlan:
    """The run's objectives with their data: losses, labels, batch samplers, G-effect targets, prompt format."""

    tokenizer: PreTrainedTokenizerBase
    objectives: list[Any]
    labels: list[str]
    samplers: list[Sampler]
    tracked: dict[str, Any]
    data: dict[str, list[QARecord]]
    fmt: PromptFormat
    pad_id: int
    aggregator: Any = None
    problems: list[str] = field(default_factory=list)

    @property
    def needs_reference(self) -> bool:
        return any(o.needs_reference for o in [*self.objectives, *self.tracked.values()])

    def to(self, device: torch.device) -> RunPlan:
        """Batches are collated on ``device`` (the run's, known once the strategy is)."""
        for s in self.samplers:
            s.device = device
        return self


def build_plan(
    config: RunConfig,
    hooks: RunHooks,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_given: bool = False,
    where: str | None = None,
) -> RunPlan:
    """Check and build everything but the weights; a :class:`ConfigError` lists every problem found."""
    from mollm.aggregators.base import AGGREGATORS
    from mollm.aggregators.base import get as get_aggregator
    from mollm.objectives import prepare_records, read_refusals
    from mollm.objectives.registry import OBJECTIVES
    from mollm.objectives.registry import get as get_objective

    problems: list[str] = []
    if tokenizer is None:
        if model_given:
            problems.append("model: a tokenizer is required when a model object is given")
        else:
            tokenizer = _tokenizer(config.model, problems)
    data = _load_data(config, problems)

    objectives: list[Any] = []
    for i, oc in enumerate(config.objectives):
        found = OBJECTIVES.check(oc.loss, oc.options)
        problems += [f"objectives.{i} ({oc.label}): {p}" for p in found]
        objectives.append(None if found else get_objective(oc.loss, **oc.options))
    aggregator = None
    agg_problems = AGGREGATORS.check(config.aggregator.name, aggregator_options(config))
    agg_problems += _length_problems(config)
    problems += [f"aggregator: {p}" for p in agg_problems]
    if not agg_problems:
        aggregator = get_aggregator(config.aggregator.name, **aggregator_options(config))
    tracked: dict[str, Any] = {}
    if config.geffect and config.geffect.objectives:
        for name in config.geffect.objectives:
            found = OBJECTIVES.check(name)
            problems += [f"geffect.objectives: {p}" for p in found]
            if not found:
                tracked[name] = get_objective(name)
    else:
        tracked = {oc.label: o for oc, o in zip(config.objectives, objectives) if o is not None}
    refusals = None
    if config.refusals:
        try:
            refusals = read_refusals(config.refusals)
        except (OSError, ValueError) as err:
            problems.append(f"refusals: {err}")

    fmt = PromptFormat(kind=config.format.kind, template=config.format.template)
    pad_id = 0
    samplers: list[Sampler] = []
    if tokenizer is not None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        normal = data.get("normal") or data.get("retain")
        for i, (oc, obj) in enumerate(zip(config.objectives, objectives)):
            if obj is None or oc.data not in data:
                continue
            # idk / mismatch train on transformed records (refusals, random normal answers).
            try:
                records = prepare_records(
                    obj, data[oc.data], normal=normal, refusals=refusals, rng=random.Random(config.seed + i)
                )
            except ValueError as err:
                problems.append(f"objectives.{i} ({oc.label}): {err}")
                continue
            examples = encode_records(records, tokenizer, fmt, config.max_length, f"objectives.{i} ({oc.label})", problems)
            samplers.append(Sampler(examples, oc.batch_size, sampler_seed(config.seed, i), pad_id))
    problems += hooks.problems(config)
    problems += _unserved(config, hooks)
    if problems:
        name = where or f"config '{config.name}'"
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{name}: {len(problems)} problem(s); nothing was written or loaded:\n{lines}")
    assert tokenizer is not None
    return RunPlan(tokenizer, objectives, [o.label for o in config.objectives], samplers, tracked, data, fmt, pad_id, aggregator)


def aggregator_options(config: RunConfig) -> dict[str, Any]:
    """The aggregator's options; ``linear`` takes the objectives' ``weight`` fields unless given ``weights``, and an
    aggregator with a ``seed`` option (``pcgrad``) the run's ``seed`` unless given one."""
    from mollm.aggregators.base import seeded_options

    opts = seeded_options(config.aggregator.name, config.aggregator.options, config.seed)
    if config.aggregator.name == "linear" and "weights" not in opts:
        opts["weights"] = [o.weight for o in config.objectives]
    return opts


def _length_problems(config: RunConfig) -> list[str]:
    m, out = len(config.objectives), []
    for key in ("preference", "weights"):
        value = config.aggregator.options.get(key)
        if isinstance(value, list) and len(value) != m:
            out.append(f"option '{key}' has {len(value)} values but there are {m} objectives")
    return out


def _unserved(config: RunConfig, hooks: RunHooks) -> list[str]:
    """Config sections that need hooks this run was not given (the engine called directly)."""
    out = []
    wants_eval = config.evaluation.before or config.evaluation.after or config.evaluation.every
    if wants_eval and not hooks.evaluates:
        out.append("evaluation: this run has no evaluator (run it with mollm.unlearn / mollm.runs.run, or set "
                   "evaluation.before, after and every to false/0)")
    if config.geffect is not None and not hooks.tracks:
        out.append("geffect: this run has no G-effect tracker (run it with mollm.unlearn / mollm.runs.run)")
    return out


def _tokenizer(spec: str, problems: list[str]) -> PreTrainedTokenizerBase | None:
    from mollm.engine.checkpoints import load_tokenizer_or_checkpoint

    try:
        return load_tokenizer_or_checkpoint(spec)
    except (OSError, ValueError, ImportError) as err:
        problems.append(f"model: {err}")
        return None


def _load_data(config: RunConfig, problems: list[str]) -> dict[str, list[QARecord]]:
    from mollm.data import load_dataset_spec

    out: dict[str, list[QARecord]] = {}
    for key, spec in config.data.items():
        try:
            if isinstance(spec, list):  # inline records in the YAML
                records = [_inline_record(r, f"data.{key}.{i}") for i, r in enumerate(spec)]
            else:
                records = load_dataset_spec(spec)
        except (OSError, ValueError) as err:
            problems.append(str(err) if isinstance(spec, list) else f"data.{key}: {err}")
            continue
        if not records:
            problems.append(f"data.{key}: '{spec}' gave no records")
            continue
        out[key] = records
    return out


def _inline_record(row: Any, where: str) -> QARecord:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a mapping with 'question' and 'answer', found {row!r}")
    for field_name in ("question", "answer"):
        if not isinstance(row.get(field_name), str) or not row[field_name].strip():
            raise ValueError(f"{where}.{field_name}: expected a non-empty string, found {row.get(field_name)!r}")
    return QARecord(row["question"], row["answer"], source=f"config: {where}")


def encode_records(
    records: Sequence[QARecord],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    max_length: int,
    where: str,
    problems: list[str],
) -> list[dict[str, list[int]]]:
    """Every record encoded; each one that cannot be (an answer cut away by ``max_length``, ...) is a problem appended
    to ``problems`` (the first few, then a count), so all are reported at once."""
    encoded = encode_many(records, tokenizer, fmt, max_length)
    examples = [e for e in encoded if not isinstance(e, DataError)]
    bad = [str(e) for e in encoded if isinstance(e, DataError)]
    for msg in bad[:_MAX_RECORD_PROBLEMS]:
        problems.append(f"{where}: {msg}")
    if len(bad) > _MAX_RECORD_PROBLEMS:
        problems.append(f"{where}: ... and {len(bad) - _MAX_RECORD_PROBLEMS} more records with the same kind of problem")
    return examples
