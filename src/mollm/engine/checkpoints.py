"""Run checkpoints ``<run>/checkpoints/step_N``: written atomically, pruned to the newest k, resumed exactly.

One process and ``ddp`` runs save accelerate state (model, optimizer, scheduler, every process's RNG). ``fsdp`` runs
save sharded: model and optimizer through ``torch.distributed.checkpoint`` (``dcp/``, each process writes its own
shards, and a run with another process count can still load them), the scheduler once, and one RNG file per process.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from mollm.engine.distributed import Strategy

SHARDED_DIR = "dcp"  # inside step_N: the torch.distributed.checkpoint folder of an fsdp run


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
) -> None:
    """Save the training state atomically (temp folder, then rename); then drop all but the newest ``keep``.

    Every process takes part; only the main process renames and prunes."""
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
        os.replace(tmp, final)
        if keep is not None:
            for old in checkpoint_dirs(run_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load(strategy: Strategy, path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
    """Restore what :func:`save` wrote into the (already prepared or sharded) model, optimizer and scheduler."""
    if strategy.name == "fsdp":
        _load_sharded(strategy.accelerator, path, model, optimizer, scheduler)
    else:
        strategy.accelerator.load_state(str(path))


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
