"""Run checkpoints ``<run>/checkpoints/step_N``: written atomically, pruned to the newest k, resumed exactly.

One process and ``ddp`` runs save accelerate state (model, optimizer, scheduler, every process's RNG). ``fsdp`` runs
save sharded: model and optimizer through ``torch.distributed.checkpoint`` (``dcp/``, each process writes its own
shards, and a run with another process count can still load them), the scheduler once, and one RNG file per process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mollm.core.atomic import atomic_write_json, replace_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

    from mollm.engine.distributed import Strategy

SHARDED_DIR = "dcp"  # inside step_N: the torch.distributed.checkpoint folder of an fsdp run
AGGREGATOR_FILE = "aggregator.json"  # inside step_N: a stateful aggregator's state


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's ``checkpoints/step_N`` folders, oldest first."""
    return sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def latest_step(run_dir: Path) -> int:
    """The step of the newest checkpoint (0: none)."""
    dirs = checkpoint_dirs(run_dir)
    return int(dirs[-1].name.split("_")[1]) if dirs else 0


def save(
    strategy: Strategy,
    run_dir: Path,
    step: int,
    keep: int | None,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    aggregator: Any = None,
) -> None:
    """Save the training state atomically (temp folder, then rename); then drop all but the newest ``keep``.

    A stateful aggregator's ``state_dict()`` (an EMA, a random generator) goes to ``aggregator.json``, so a resumed
    run continues exactly. Every process takes part; only the main process writes it, renames and prunes."""
    accelerator = strategy.accelerator
    final = run_dir / "checkpoints" / f"step_{step}"
    tmp = final.with_name(f".tmp_step_{step}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    if strategy.name == "fsdp":
        _save_sharded(accelerator, tmp, model, optimizer, scheduler)
    else:
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = _aggregator_state(aggregator)
        if state:
            atomic_write_json(tmp / AGGREGATOR_FILE, state)
        replace_dir(tmp, final)
        if keep is not None:
            for old in checkpoint_dirs(run_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load(
    strategy: Strategy, path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, aggregator: Any = None
) -> None:
    """Restore what :func:`save` wrote into the (already prepared or sharded) model, optimizer, scheduler and
    aggregator (every process reads the same aggregator state, so all keep taking the same steps)."""
    if strategy.name == "fsdp":
        _load_sharded(strategy.accelerator, path, model, optimizer, scheduler)
    else:
        strategy.accelerator.load_state(str(path))
    if (path / AGGREGATOR_FILE).is_file() and hasattr(aggregator, "load_state_dict"):
        aggregator.load_state_dict(json.loads((path / AGGREGATOR_FILE).read_text()))


def _aggregator_state(aggregator: Any) -> dict[str, Any]:
    state_dict = getattr(aggregator, "state_dict", None)
    return dict(state_dict()) if callable(state_dict) else {}


def _rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _save_sharded(
    accelerator: Accelerator, folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder / SHARDED_DIR))
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save(_rng_state(), folder / f"rng_{accelerator.process_index}.pt")


def _load_sharded(
    accelerator: Accelerator, folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng = folder / f"rng_{accelerator.process_index}.pt"
    if rng.is_file():  # resumed with another process count: ranks beyond the saved ones keep their seeded state
        _set_rng_state(torch.load(rng, weights_only=False))


# --- checkpoints as models ------------------------------------------------------------------------------------

# One process / data-parallel runs (accelerate state), fsdp runs (torch.distributed.checkpoint shards).
_CHECKPOINT_WEIGHTS = ("model.safetensors", "custom_checkpoint_0.pkl", f"{SHARDED_DIR}/.metadata")


def is_checkpoint(path: str | os.PathLike[str] | None) -> bool:
    """``RUN/checkpoints/step_N`` holding weights, in a run directory whose config names the base model."""
    if path is None:
        return False
    p = Path(path).expanduser()
    return (
        p.is_dir()
        and p.parent.name == "checkpoints"
        and (p.parent.parent / "config.yaml").is_file()
        and any((p / name).is_file() for name in _CHECKPOINT_WEIGHTS)
    )


def _run_config(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((path.parent.parent / "config.yaml").read_text()) or {}


def load_model_or_checkpoint(
    spec: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> tuple[Any, Any]:
    """:func:`mollm.models.loading.load_model`, and also a run's checkpoint ``RUN/checkpoints/step_N``: the run's
    base model (with its LoRA adapter if it had one) rebuilt and the checkpoint's weights loaded into it."""
    from mollm.models.loading import load_model

    if not is_checkpoint(spec):
        return load_model(spec, dtype=dtype, cache_dir=cache_dir, device=device)
    model, tokenizer = _load_checkpoint(Path(spec).expanduser(), dtype, cache_dir)  # type: ignore[arg-type]
    if device is not None:
        model.to(device)
    return model, tokenizer


def model_spec_problem(spec: str | os.PathLike[str] | None) -> str | None:
    """Why ``spec`` names no loadable model or checkpoint (None when it does); no weights are read."""
    from mollm.models.loading import resolve_model_spec

    if is_checkpoint(spec):
        return None
    try:
        resolve_model_spec(spec)
    except ValueError as err:
        return str(err)
    return None


def load_tokenizer_or_checkpoint(spec: str | os.PathLike[str] | None = None) -> Any:
    """The tokenizer of a model spec, or of the run a checkpoint belongs to (no weights are read)."""
    from mollm.models.loading import load_tokenizer

    if is_checkpoint(spec):
        return load_tokenizer(_run_config(Path(spec).expanduser()).get("model", "embedded"))  # type: ignore[arg-type]
    return load_tokenizer(spec)


def _load_checkpoint(path: Path, dtype: torch.dtype | str, cache_dir: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    import warnings

    from mollm.models.loading import ModelLoadError

    run_config = _run_config(path)
    model, tokenizer = load_model_or_checkpoint(run_config.get("model", "embedded"), dtype=dtype, cache_dir=cache_dir)
    lora = run_config.get("lora")
    if lora:
        from mollm.models.lora import apply_lora

        model = apply_lora(
            model,
            r=lora["r"],
            alpha=lora["alpha"],
            dropout=lora.get("dropout", 0.0),
            target_modules=lora.get("target_modules"),
        )
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / SHARDED_DIR / ".metadata").is_file():
        import torch.distributed.checkpoint as dcp

        # Sharded by several processes; one process reads every shard into the whole model (no process group).
        wanted = {"model": {k: v for k, v in model.state_dict().items() if not k.endswith("lm_head.weight")}}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*load in a single process")
            dcp.load(wanted, checkpoint_id=str(path / SHARDED_DIR))
        state = wanted["model"]
    else:
        state = torch.load(path / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embedding, saved once
    if missing or unexpected:
        raise ModelLoadError(
            f"checkpoint {path}: its weights do not fit the run's model ({run_config.get('model')!r}): "
            f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    model.tie_weights()
    model.eval()
    return model, tokenizer
