"""Precision and memory options of a run: bf16 weights, bf16 autocast, bf16 gradient rows, gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mollm.engine.config import ConfigError, load_config
from mollm.engine.distributed import DistributedError, shard_units
from mollm.runs import RunError, run
from mollm.models.tiny import tiny_gpt2, tiny_model

FACTS = "n_people=6,seed=1,forget_fraction=0.34"


def _tree(tmp_path, name: str, **over) -> dict:
    tree = {
        "name": name,
        "output_dir": str(tmp_path / "{name}"),
        "max_length": 48,
        "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
        "objectives": [
            {"name": "forget", "loss": "ga", "data": "forget", "batch_size": 2},
            {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 2},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
        ],
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "steps": 3,
        "evaluation": {"before": False, "after": False},
    }
    tree.update(over)
    return tree


def _run(tmp_path, tokenizer, name: str, **over):
    return run(load_config(_tree(tmp_path, name, **over)), model=tiny_model(), tokenizer=tokenizer, progress=False)


def _losses(result) -> list[float]:
    return [v for record in result.metrics for v in record["losses"].values()]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, tokenizer):
    return _run(tmp_path_factory.mktemp("fp32"), tokenizer, "fp32")


@pytest.mark.parametrize(
    "option", [{"dtype": "bfloat16"}, {"mixed_precision": "bf16"}, {"grad_dtype": "bfloat16"}], ids=lambda o: str(o)
)
def test_bf16_runs_are_finite_and_close_to_float32(tmp_path, tokenizer, fp32, option):
    result = _run(tmp_path, tokenizer, "bf16", **option)
    assert result.status == "completed" and all(r["finite"] for r in result.metrics)
    got, want = _losses(result), _losses(fp32)
    assert all(math.isfinite(v) for v in got)
    # bf16 keeps ~3 significant digits: losses near 11 agree to a few hundredths; the KL starts at 0 in both.
    assert got == pytest.approx(want, rel=2e-2, abs=2e-2)
    if option != {"grad_dtype": "bfloat16"}:  # the forward really ran in bf16 (else the losses would be equal)
        assert got != want
    weights = load_file(str(result.model_dir / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_gradient_checkpointing_gives_the_same_steps(tmp_path, tokenizer, fp32):
    model = tiny_model()
    result = run(
        load_config(_tree(tmp_path, "ckpt", gradient_checkpointing=True)),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    assert model.is_gradient_checkpointing  # activations were recomputed in backward, not kept
    assert _losses(result) == pytest.approx(_losses(fp32), rel=1e-6, abs=1e-7)
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (result, fp32))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_fp16_is_refused_with_the_reason(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # what `accelerate launch --mixed_precision fp16` sets
    with pytest.raises(RunError, match="fp16 needs loss scaling"):
        _run(tmp_path, tokenizer, "fp16")
    assert not (tmp_path / "fp16" / "config.yaml").exists()


def test_precision_and_strategy_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="grad_dtype"):
        load_config(_tree(tmp_path, "x", grad_dtype="float16"))
    with pytest.raises(ConfigError, match="distributed.strategy"):
        load_config(_tree(tmp_path, "x", distributed={"strategy": "zero3"}))
    with pytest.raises(ConfigError, match="not available with distributed.strategy=fsdp"):
        load_config(_tree(tmp_path, "x", distributed={"strategy": "fsdp"}, geffect={"every": 1}))


def test_one_process_fsdp_config_runs_the_plain_step(tmp_path, tokenizer, fp32):
    result = _run(tmp_path, tokenizer, "fsdp1", distributed={"strategy": "fsdp"})
    assert _losses(result) == pytest.approx(_losses(fp32), rel=1e-6, abs=1e-7)  # the same result for any process count


def test_fsdp_shards_the_blocks_the_model_names():
    assert [type(m).__name__ for m in shard_units(tiny_model())] == ["LlamaDecoderLayer"] * 2
    assert [type(m).__name__ for m in shard_units(tiny_gpt2(num_layers=3))] == ["GPT2Block"] * 3
    with pytest.raises(DistributedError, match="_no_split_modules"):
        shard_units(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_accelerate_launch_mixed_precision_becomes_the_runs_and_is_recorded(tmp_path, tokenizer, monkeypatch):
    import yaml

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    result = _run(tmp_path, tokenizer, "launched")
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["mixed_precision"] == "bf16"


def test_shipped_accelerate_configs_launch_plain_processes_for_mollm_to_shard():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    paths = sorted(folder.glob("*.yaml"))
    assert {p.name for p in paths} >= {"1gpu.yaml", "8gpu.yaml", "2x8gpu.yaml"}
    for path in paths:
        cfg = load_config_from_file(str(path))
        # accelerate's FSDP/DeepSpeed plugins would hide the per-objective rows; mollm shards with FSDP2 itself.
        assert cfg.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU), path.name
        assert not cfg.fsdp_config and cfg.mixed_precision == "bf16", path.name
    assert load_config(folder.parent / "llama3_8b_fsdp.yaml").distributed.strategy == "fsdp"
