"""Models: loading (embedded SmolLM2, GGUF, Hugging Face folders, run directories, hub ids), saving, LoRA,
the frozen reference model and tiny random models for tests."""

from mollm.models.loading import (
    ModelLoadError,
    cache_root,
    embedded_model_available,
    embedded_model_path,
    gguf_cache_path,
    load_model,
    load_tokenizer,
    save_model,
)
from mollm.models.lora import apply_lora, default_target_modules, is_lora, trainable_parameters
from mollm.models.reference import Reference
from mollm.models.tiny import tiny_model

__all__ = [
    "ModelLoadError",
    "Reference",
    "apply_lora",
    "cache_root",
    "default_target_modules",
    "embedded_model_available",
    "embedded_model_path",
    "gguf_cache_path",
    "is_lora",
    "load_model",
    "load_tokenizer",
    "save_model",
    "tiny_model",
    "trainable_parameters",
]
