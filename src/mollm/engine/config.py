"""Run configuration: a YAML file validated by pydantic, with ``key.sub=value`` command-line overrides.

Every run writes its fully resolved configuration (defaults filled in) to ``<run>/config.yaml``, so a run can be
reproduced from its directory alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mollm.core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Strict):
    """LoRA adapter settings; the reference model is then the base model with the adapter disabled."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    merge: bool = True  # merge the adapter into the saved model


class FormatConfig(_Strict):
    """Prompt formatting: the tokenizer's chat template, or a plain template with a ``{question}`` slot."""

    kind: Literal["chat", "plain"] = "plain"
    template: str = "### Question: {question}\n ### Answer: "

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("template must contain '{question}'")
        return v


class ObjectiveConfig(_Strict):
    """One objective of the run: a loss from the registry applied to one of the named data sets."""

    name: str | None = None  # label in logs; defaults to the loss name
    loss: str
    data: str
    weight: float = 1.0  # used by the `linear` aggregator and the summed-loss baseline
    batch_size: int = Field(4, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.loss


class AggregatorConfig(_Strict):
    name: str = "ds_mgda"
    options: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0)
    # AdamW's fused kernel (one pass over all weights; on CPU ~3x faster than torch's default per-weight loop, the
    # same update up to rounding; the Trainer's default optimizer on torch >= 2.8). null: on when every trainable
    # weight is an unsharded floating-point tensor on a CPU or CUDA device; false: torch's default implementation.
    fused: bool | None = None


class ScheduleConfig(_Strict):
    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)


class StopConfig(_Strict):
    """Stop early once an evaluated metric crosses a threshold, e.g. ``forget/nll`` above 8."""

    metric: str
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> StopConfig:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        return self


class SuiteConfig(_Strict):
    """One data set and the metrics computed on it (names, or ``{name: ..., option: value}`` dicts). In a run config
    ``data`` may also name a key of the run's ``data``."""

    data: str
    limit: int | None = Field(None, gt=0)
    metrics: list[str | dict[str, Any]] = Field(default_factory=list)


#: What a run evaluates when its config names no suites: every data set, its first items, these metrics.
DEFAULT_RUN_METRICS = ("nll", "probability", "accuracy")
DEFAULT_RUN_LIMIT = 32


class EvaluationConfig(_Strict):
    """Evaluation during a run, before, every N steps and after: the metric suites of :mod:`mollm.evaluation` (the
    same ``suites`` a ``mollm eval`` config has). Without ``suites``, every data set of the run is evaluated on its
    first 32 items with ``nll``, ``probability`` and ``accuracy``. Results are flat keys ``SUITE/METRIC`` (and
    ``SUITE/METRIC.AGGREGATE``), e.g. ``forget/nll``."""

    every: int = Field(0, ge=0)  # 0 = only before and after
    before: bool = True
    after: bool = True
    max_new_tokens: int = Field(64, gt=0)  # greedy generation length (as in `mollm eval`)
    batch_size: int = Field(8, gt=0)
    suites: dict[str, SuiteConfig] | None = None


class GEffectTrackingConfig(_Strict):
    """Track G-effects during a run: every ``every`` steps, on fixed probe batches of ``forget`` and ``retain`` data,
    for ``objectives`` (loss names; default the run's own objectives). Written to ``<run>/geffect.jsonl``."""

    every: int = Field(10, gt=0)
    objectives: list[str] | None = None
    forget: str | None = None  # key of `data`; default the first objective's data
    retain: str | None = None  # key of `data`; default "retain" when present
    batch_size: int = Field(4, gt=0)
    per_sample: bool = False


class DistributedConfig(_Strict):
    """How a multi-process launch (``torchrun`` / ``accelerate launch``) splits the work (``engine/distributed.py``):
    ``ddp`` keeps the whole model on every process; ``fsdp`` shards weights, gradients and optimizer state with
    FSDP2. One process always runs the plain step."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    # fsdp only: shard within groups of this many processes and replicate across groups (HSDP, e.g. the GPUs of one
    # node); null: shard across all processes.
    shard_size: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _shard_size_needs_fsdp(self) -> DistributedConfig:
        if self.shard_size is not None and self.strategy != "fsdp":
            raise ValueError("shard_size applies to strategy: fsdp only")
        return self


class SweepConfig(_Strict):
    """A grid over any config keys, run by ``mollm sweep``: every combination is an ordinary run directory under
    ``output_dir``; ``x``/``y`` name the two metrics of the sweep's Pareto plot (``SUITE/METRIC`` or a unique
    suffix, as ``mollm compare`` takes)."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)  # dotted key -> values, e.g. {optimizer.lr: [1e-5, 3e-5]}
    output_dir: str = "sweeps/{name}"
    x: str = "harmful_rate"
    y: str = "perplexity"
    x_direction: Literal["min", "max"] | None = None
    y_direction: Literal["min", "max"] | None = None

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return v


class RunConfig(_Strict):
    """Everything a run needs. ``mode`` chooses unlearning or plain fine-tuning (to build a target model)."""

    mode: Literal["unlearn", "finetune"] = "unlearn"
    seed: int = 0
    model: str = "embedded"
    dtype: Literal["float32", "bfloat16"] = "float32"  # the weights' dtype
    # Autocast compute (and FSDP bf16 all-gathers); null: what `accelerate launch --mixed_precision` says, else "no".
    mixed_precision: Literal["no", "bf16"] | None = None
    grad_dtype: Literal["float32", "bfloat16"] | None = None  # the (m, n) gradient rows; null: the weights' dtype
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1.3x compute
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    lora: LoraConfig | None = None
    format: FormatConfig = Field(default_factory=FormatConfig)
    max_length: int = Field(256, gt=8)
    data: dict[str, str | list[dict[str, str]]] = Field(default_factory=dict)
    refusals: str | None = None  # file of refusal strings for the `idk` objective
    objectives: list[ObjectiveConfig]
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)  # passes over the first objective's data
    grad_clip: float | None = Field(1.0, gt=0)
    max_bad_steps: int = Field(3, gt=0)  # stop after this many non-finite steps in a row
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int | None = Field(2, gt=0)  # newest k kept (each holds model + optimizer); null = all
    log_every: int = Field(1, gt=0)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    stop: StopConfig | None = None
    geffect: GEffectTrackingConfig | None = None
    sweep: SweepConfig | None = None  # used by `mollm sweep`; `mollm unlearn` runs the config as it is
    output_dir: str = "runs/{name}"
    name: str = "run"
    overwrite: bool = False
    resume: bool = False

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if not self.objectives:
            raise ValueError("objectives: give at least one objective")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'steps' or 'epochs'")
        labels = [o.label for o in self.objectives]
        if len(set(labels)) != len(labels):
            raise ValueError(f"objectives: labels must be unique, got {labels} (set 'name' to tell them apart)")
        for i, o in enumerate(self.objectives):
            if o.data not in self.data:
                raise ValueError(f"objectives.{i}.data: '{o.data}' is not a key of 'data' ({sorted(self.data)})")
        if self.geffect is not None and self.distributed.strategy == "fsdp":
            raise ValueError(
                "geffect: G-effect tracking needs whole gradients and is not available with distributed.strategy=fsdp; "
                "run `mollm geffect RUN` on the saved checkpoints instead"
            )
        if self.geffect is not None:
            for key in ("forget", "retain"):
                name = getattr(self.geffect, key)
                if name is not None and name not in self.data:
                    raise ValueError(f"geffect.{key}: '{name}' is not a key of 'data' ({sorted(self.data)})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def evaluation_suites(self) -> dict[str, dict[str, Any]]:
        """The suites the run evaluates (the configured ones, or the default per data set), as plain dicts."""
        if self.evaluation.suites is not None:
            return {name: s.model_dump(exclude_none=True) for name, s in self.evaluation.suites.items()}
        return {
            key: {"data": key, "limit": DEFAULT_RUN_LIMIT, "metrics": list(DEFAULT_RUN_METRICS)} for key in self.data
        }


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override '{dotted}': '{'.'.join(keys[: i + 1])}' is not a section")
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML, so ``1e-5``, ``true``, ``[1, 2]`` work)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optimizer.lr=3e-5")
        key, raw = item.split("=", 1)
        try:
            _set_path(tree, key.strip(), yaml.safe_load(raw))
        except (IndexError, ValueError) as err:
            raise ConfigError(f"override '{item}': {err}") from None
    return tree


def format_validation_error(err: ValidationError, where: str) -> str:
    """A pydantic error as one line per bad key, under a header naming the file."""
    lines = [f"{where}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(tree: dict[str, Any], where: str = "config") -> RunConfig:
    """Validate a config tree; errors name every bad key."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bad YAML or a non-mapping is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return tree


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Load a run configuration from a YAML file (or a dict) and apply ``key=value`` overrides."""
    if isinstance(source, dict):
        tree, where = dict(source), "config"
    else:
        tree, where = read_yaml_mapping(source), str(source)
    return config_from_dict(apply_overrides(tree, overrides or []), where)


def dump_config(config: RunConfig) -> str:
    """The resolved configuration as YAML (every default filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
