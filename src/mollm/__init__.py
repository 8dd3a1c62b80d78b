"""mollm: multi-objective unlearning of large language models.

Python API (mirrors the CLI)::

    import mollm
    config = mollm.load_config("configs/mollm.yaml", ["seed=1"])   # --set style overrides
    result = mollm.unlearn(config)          # -> RunResult(run_dir, model_dir, steps, status, metrics, evaluations)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mollm.engine.config import RunConfig
    from mollm.engine.run import RunResult

__version__ = "0.1.0"

__all__ = ["__version__", "finetune", "load_config", "unlearn", "validate"]


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a run configuration (YAML path or dict) with ``key=value`` overrides."""
    from mollm.engine.config import load_config as _load

    return _load(source, overrides)


def _run(
    config: RunConfig | str | Path | dict[str, Any], mode: str, overrides: list[str] | None, **kwargs: Any
) -> RunResult:
    from mollm.engine.config import RunConfig
    from mollm.runs import run

    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(config.model_dump(mode="json"), overrides)
    return run(config.model_copy(update={"mode": mode}), **kwargs)


def unlearn(
    config: RunConfig | str | Path | dict[str, Any], overrides: list[str] | None = None, **kwargs: Any
) -> RunResult:
    """Run unlearning as configured; returns a :class:`mollm.engine.run.RunResult`."""
    return _run(config, "unlearn", overrides, **kwargs)


def finetune(
    config: RunConfig | str | Path | dict[str, Any], overrides: list[str] | None = None, **kwargs: Any
) -> RunResult:
    """Fine-tune (e.g. one ``nll`` objective) to build a target model; returns a ``RunResult``."""
    return _run(config, "finetune", overrides, **kwargs)


def validate(config: RunConfig | str | Path | dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Check a run configuration as :func:`unlearn` would before starting (options, data, suites, model spec,
    truncation) without writing anything or loading weights; a ``ConfigError`` lists every problem."""
    from mollm.engine.config import RunConfig
    from mollm.runs import validate as _validate

    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    _validate(config)
    return config
