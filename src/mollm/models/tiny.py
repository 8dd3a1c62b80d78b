"""Tiny randomly initialised causal LMs for fast tests (Llama, like the embedded SmolLM2; GPT-2 as a second one)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def tiny_model(
    vocab_size: int = 49152,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small random Llama model; ``vocab_size`` defaults to the embedded SmolLM2 tokenizer's so they pair up."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def tiny_gpt2(vocab_size: int = 49152, *, num_layers: int = 2, hidden_size: int = 64, seed: int = 0) -> GPT2LMHeadModel:
    """A small random GPT-2 (learned positions, fused Conv1D attention, ``GPT2Block``): another architecture for
    code that must not assume Llama's module names (FSDP's per-block sharding, LoRA targets)."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=4,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.eval()
    return model


def tiny_tokenizer(vocab_size: int = 64):
    """A word-level fast tokenizer over ``w0 w1 …`` plus ``<unk>``=0, ``<s>``=1, ``</s>``=2 (tiny_model's ids).

    It has no pad token (like many causal LMs), and whitespace-separated ``wN`` words map to single tokens, so tests
    can write inputs by hand. Pair it with ``tiny_model(vocab_size=...)`` of the same size.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 4:
        raise ValueError(f"vocab_size must be at least 4 (3 special tokens and one word), got {vocab_size}")
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
