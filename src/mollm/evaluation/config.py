"""``mollm eval`` configuration: which model, which reference, which metric suites (YAML + ``key=value`` overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mollm.core.errors import ConfigError
from mollm.engine.config import FormatConfig, SuiteConfig, apply_overrides, format_validation_error, read_yaml_mapping


class EvalConfig(BaseModel):
    """Everything ``mollm eval`` needs. Names and defaults are those of a run config (``model``, ``format``,
    ``max_length``, ``output_dir``, and ``max_new_tokens``, ``batch_size``, ``suites`` as in its ``evaluation``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "embedded"
    reference: str | None = None  # the original model, for `kl` and `fluency`
    format: FormatConfig = Field(default_factory=FormatConfig)
    max_length: int = Field(256, gt=8)
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)
    cache: bool = True
    output_dir: str = "eval/{model_name}"
    suites: dict[str, SuiteConfig]

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir.format(model_name=Path(self.model).name or "model"))

    def suites_dict(self) -> dict[str, dict[str, Any]]:
        return {name: s.model_dump(exclude_none=True) for name, s in self.suites.items()}


def load_eval_config(path: str | Path, overrides: list[str] | None = None) -> EvalConfig:
    """Read and validate an evaluation config; errors name the file and key."""
    tree = read_yaml_mapping(path)
    try:
        return EvalConfig.model_validate(apply_overrides(tree, overrides or []))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
