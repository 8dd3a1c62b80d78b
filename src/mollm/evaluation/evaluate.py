"""``evaluate``: run metric suites for one model, write results JSON atomically, and cache per-metric results and
generations so that re-running does not recompute (or even load the model) when nothing changed.

Suites::

    suites = {
        "forget":  {"data": records_or_path, "metrics": ["probability", "rouge_l",
                                                         {"name": "truth_ratio", "kind": "forget"},
                                                         {"name": "forget_quality", "reference": "log.json"},
                                                         {"name": "mia", "holdout": "holdout"}]},
        "holdout": {"data": ..., "metrics": []},
    }

``data`` is a list of :class:`~mollm.data.records.QARecord` or a path read with
:func:`mollm.data.loading.load_records` (``limit`` optional). A metric is a name or a dict with ``name`` plus its
options; the ``mia`` option ``holdout`` names another suite. Cache key: model identity (path + size/mtime of its
weight files, hub id, or a hash of the in-memory weights) + metric + options + data hash + settings (+ the
reference model's identity for metrics that use it).

The results record the evaluated model's base model (``base_model``, see
:func:`mollm.models.loading.base_model_identity`), so that a results file used as a retain-model reference
(``forget_quality``'s ``reference``, ``mia``'s ``retain_auc``) says which pretrained model it comes from; such a
reference from another base model is refused before anything is computed (and whether or not results are cached). A
``forget_quality`` whose ``reference`` is this evaluation's own results file means the evaluated model is the retain
model: its reference is then its own truth ratios (forget quality 1 by construction), which is how one config both
writes the retain model's reference and evaluates other models against it (likewise ``mia`` with ``retain_auc`` the
own results: no privleak, which would be 0 by construction).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mollm.core.atomic import atomic_write_json, json_safe
from mollm.core.errors import ConfigError
from mollm.data.encode import PromptFormat
from mollm.data.records import QARecord
from mollm.evaluation.registry import EvalContext, MetricResult, compute_metric, get_metric

CACHE_VERSION = 3  # 2: generations kept unstripped; 3: whitespace-heavy output is degenerate
RESULTS_FILE = "results.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model")
_EMBEDDED = ("embedded", "smollm2")


# --- identity and hashing --------------------------------------------------------------------------------------


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def data_hash(records: Sequence[QARecord]) -> str:
    """Content hash of records (question, answer and extra fields, in order)."""
    return _sha([[r.question, r.answer, r.extra] for r in records])


def _files_identity(path: Path) -> list[list[Any]]:
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _WEIGHT_SUFFIXES)
    )
    return [[str(f.relative_to(path) if f != path else f.name), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def model_identity(model: Any, *, model_id: str | None = None) -> str:
    """A string identifying model weights for caching: ``model_id`` when given; for a spec (None / "embedded" / path
    / run dir / hub id), the resolved path plus size and mtime of its weight and config files, or the hub id; for an
    in-memory model, a hash of its parameters and buffers."""
    if model_id is not None:
        return f"id:{model_id}"
    if model is None or (isinstance(model, str) and model.strip().lower() in _EMBEDDED):
        from mollm.models.loading import embedded_model_path

        p = embedded_model_path()
        return f"embedded:{p}:{_sha(_files_identity(p))}"
    if isinstance(model, (str, os.PathLike)):
        p = Path(model).expanduser()
        if p.exists():
            return f"path:{p.resolve()}:{_sha(_files_identity(p.resolve()))}"
        return f"hub:{model}"
    module = getattr(model, "_model", model)  # a Reference wraps its module
    if isinstance(module, torch.nn.Module):
        h = hashlib.blake2b(digest_size=20)
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"weights:{h.hexdigest()}"
    raise TypeError(f"cannot identify model of type {type(model).__name__}; pass model_id=")


def _canonical(value: Any, suites_data: Mapping[str, list[QARecord]]) -> Any:
    """Options made hashable: record lists by content hash, files by path + size + mtime."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, QARecord) for v in value):
        return {"records": data_hash(value)}
    if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
        return {"file": str(Path(value).resolve()), "stat": _files_identity(Path(value))}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, suites_data) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, suites_data) for v in value]
    return value


# --- atomic files ---------------------------------------------------------------------------------------------


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (NaN/inf become null) via a temporary file in the same folder and a rename."""
    atomic_write_json(path, obj, indent=1)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a missing or corrupt cache entry is just a miss


class _GenerationStore:
    """Generations on disk, keyed by model identity, questions and generation settings."""

    def __init__(self, folder: Path, model_key: str, settings: dict[str, Any]) -> None:
        self.folder, self.model_key, self.settings = folder, model_key, settings

    def _path(self, records: Sequence[QARecord]) -> Path:
        key = _sha([CACHE_VERSION, self.model_key, self.settings, [r.question for r in records]])
        return self.folder / f"generations-{key[:32]}.json"

    def get(self, records: Sequence[QARecord]) -> list[str] | None:
        got = _read_json(self._path(records))
        if (
            isinstance(got, dict)
            and isinstance(got.get("generations"), list)
            and len(got["generations"]) == len(records)
        ):
            return [str(g) for g in got["generations"]]
        return None

    def put(self, records: Sequence[QARecord], texts: list[str]) -> None:
        write_json_atomic(self._path(records), {"questions": [r.question for r in records], "generations": texts})


# --- suites ---------------------------------------------------------------------------------------------------


def _load_data(name: str, suite: Mapping[str, Any]) -> list[QARecord]:
    if "data" not in suite:
        raise ValueError(
            f"suite {name!r}: missing field 'data' (a list of QARecord, a path or a data spec such as 'tofu:PATH')"
        )
    data = suite["data"]
    limit = suite.get("limit")
    if isinstance(data, (str, os.PathLike)):
        from mollm.data.spec import load_dataset_spec

        try:
            records = load_dataset_spec(data if isinstance(data, str) else Path(data), limit=limit)
        except (OSError, ValueError) as err:
            raise ValueError(f"suite {name!r}: data: {err}") from None
    elif isinstance(data, Sequence) and all(isinstance(r, QARecord) for r in data):
        records = list(data)[:limit] if limit else list(data)
    else:
        raise ValueError(
            f"suite {name!r}: field 'data' must be a list of QARecord or a path, got {type(data).__name__}"
        )
    if not records:
        raise ValueError(f"suite {name!r}: no records")
    return records


def _metric_entries(name: str, suite: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    metrics = suite.get("metrics", [])
    if isinstance(metrics, Mapping):  # {"truth_ratio": {"kind": "forget"}, "rouge_l": {}}
        metrics = [{"name": k, **(v or {})} for k, v in metrics.items()]
    out: list[tuple[str, dict[str, Any]]] = []
    for i, m in enumerate(metrics):
        if isinstance(m, str):
            out.append((m, {}))
        elif isinstance(m, Mapping) and isinstance(m.get("name"), str):
            out.append((m["name"], {k: v for k, v in m.items() if k != "name"}))
        else:
            raise ValueError(f"suite {name!r}: metrics[{i}] must be a metric name or a dict with 'name', got {m!r}")
    names = {metric for metric, _ in out}
    if "harmful_rate" in names and "fluency" not in names:
        out.append(("fluency", {}))  # a harmful rate alone proves nothing: gibberish is "harmless"
    return out


def _spec_problem(spec: Any) -> str | None:
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        return None  # a loaded model
    from mollm.engine.checkpoints import model_spec_problem

    return model_spec_problem(spec)


def plan_metrics(suites: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """``{suite: {result name: metric name}}``: what evaluating ``suites`` produces (``fluency`` added beside a
    harmful rate); suites whose metric list is malformed are left out (see :func:`check_suites`)."""
    out: dict[str, dict[str, str]] = {}
    for name, suite in suites.items():
        try:
            out[name] = {str(opts.get("as", metric)): metric for metric, opts in _metric_entries(name, suite)}
        except ValueError:
            continue
    return out


def check_suites(suites: Mapping[str, Mapping[str, Any]], *, run_data: set[str] | None = None) -> list[str]:
    """Every problem with ``suites`` — data that cannot be read, unknown metrics, bad options, a ``mia`` holdout that
    is not a suite, a judge that does not exist — found without loading any model. Empty when all is well.
    ``run_data``: names of a run's data sets, which a suite's ``data`` may name instead of a spec."""
    from mollm.evaluation.judge import judge_kind
    from mollm.evaluation.registry import METRICS

    problems: list[str] = []
    for name, suite in suites.items():
        if not (run_data and isinstance(suite.get("data"), str) and suite["data"] in run_data):
            try:
                _load_data(name, suite)
            except ValueError as err:
                problems.append(str(err))
        try:
            entries = _metric_entries(name, suite)
        except ValueError as err:
            problems.append(str(err))
            continue
        seen: set[str] = set()
        for metric, options in entries:
            resolved = dict(options)
            out_key = str(resolved.pop("as", metric))
            if out_key in seen:
                problems.append(f"suite {name!r}: result {out_key!r} appears twice; give one an 'as' name")
            seen.add(out_key)
            problems += [f"suite {name!r}: {p}" for p in METRICS.check(metric, resolved)]
            holdout = resolved.get("holdout")
            if metric == "mia" and isinstance(holdout, str) and holdout not in suites:
                problems.append(
                    f"suite {name!r}: metric 'mia' option holdout={holdout!r} is not a suite (suites: {sorted(suites)})"
                )
            if metric == "harmful_rate":
                try:
                    judge_kind(resolved.get("judge", "keyword"))
                except FileNotFoundError as err:
                    problems.append(f"suite {name!r}: metric 'harmful_rate': {err}")
    return problems


def evaluate(
    model: Any,
    suites: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    cache: bool = True,
    *,
    tokenizer: Any = None,
    reference: Any = None,
    model_id: str | None = None,
    fmt: PromptFormat = PromptFormat(),
    batch_size: int = 8,
    max_length: int = 256,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``suites`` and write ``out_dir/results.json``; return the same dict.

    ``model`` is a spec for :func:`mollm.models.loading.load_model` (None / "embedded" / path / run dir / hub id),
    loaded only when some result is not cached, or a loaded model (then pass ``tokenizer``). ``reference`` (same
    kinds, or a :class:`~mollm.models.reference.Reference`) is the original model, needed by ``kl`` and ``fluency``.
    ``model_id`` overrides the model's cache identity (e.g. ``"run-x/step-40"`` during training). With
    ``cache=False`` nothing is read from or written to ``out_dir/cache``.

    Result layout: ``{"model": identity, "base_model": base, "settings": {...}, "suites": {suite: {metric:
    {"aggregate", "per_item", "columns", "options", "cached"}}}}``; ``base`` is
    :func:`mollm.models.loading.base_model_identity` of ``model``.
    """
    out_dir = Path(out_dir)
    problems = check_suites(suites)
    for what, spec in (("model", model), ("reference", reference)):
        if what == "model" or spec is not None:
            problem = _spec_problem(spec)
            problems += [f"{what}: {problem}"] if problem else []
    if problems:  # before any model is loaded or anything is written
        raise ConfigError(f"{len(problems)} problem(s) with the evaluation suites:\n" + "\n".join(f"  - {p}" for p in problems))
    settings = {"fmt": asdict(fmt), "max_length": max_length, "max_new_tokens": max_new_tokens}
    data = {name: _load_data(name, suite) for name, suite in suites.items()}
    plan = {name: _metric_entries(name, suite) for name, suite in suites.items()}

    is_spec = model is None or isinstance(model, (str, os.PathLike))
    if not is_spec and tokenizer is None:
        raise ValueError("evaluate: a loaded model needs its tokenizer; pass tokenizer=")
    if not cache and model_id is None and not is_spec:
        model_key = "in-memory model (not hashed: cache off)"  # hashing weights costs ~1 s per 135M parameters
    else:
        model_key = model_identity(model, model_id=model_id)
    ref_key: str | None = None
    base_model = _base_model(model)
    own_results = (out_dir / RESULTS_FILE).resolve()
    if base_model is not None:
        for entries in plan.values():
            for metric_name, options in entries:
                _check_reference_base_early(metric_name, options, base_model, own_results)

    def ref_identity() -> str:
        nonlocal ref_key
        if ref_key is None:
            ref_key = model_identity(reference) if reference is not None else "none"
        return ref_key

    def loader():
        from mollm.core.device import default_device
        from mollm.engine.checkpoints import load_model_or_checkpoint as load_model

        return load_model(model, device=default_device())

    def reference_loader():
        if isinstance(reference, (str, os.PathLike)) or reference is None:
            from mollm.core.device import default_device
            from mollm.engine.checkpoints import load_model_or_checkpoint as load_model

            return load_model(reference, device=default_device())[0]
        return reference

    cache_dir = out_dir / "cache"
    store = _GenerationStore(cache_dir, model_key, settings) if cache else None
    ctx = EvalContext(
        None if is_spec else model,
        tokenizer,
        loader=loader if is_spec else None,
        reference_loader=reference_loader if reference is not None else None,
        fmt=fmt,
        batch_size=batch_size,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        progress=progress,
        generation_store=store,
    )

    results: dict[str, Any] = {"model": model_key, "base_model": base_model, "settings": settings, "suites": {}}
    for suite_name, entries in plan.items():
        suite_out: dict[str, Any] = {}
        for metric_name, options in entries:
            spec = get_metric(metric_name)
            resolved = dict(options)
            out_key = str(resolved.pop("as", metric_name))  # lets one suite run a metric twice with other options
            if out_key in suite_out:
                raise ValueError(f"suite {suite_name!r}: result {out_key!r} appears twice; give one an 'as' name")
            if metric_name == "mia":
                holdout = resolved.get("holdout")
                if isinstance(holdout, str):
                    if holdout not in data:
                        raise ValueError(
                            f"suite {suite_name!r}: metric 'mia' option holdout={holdout!r} is not a "
                            f"suite (suites: {sorted(data)})"
                        )
                    resolved["holdout"] = data[holdout]
            note = None
            if metric_name == "forget_quality" and _is_file(resolved.get("reference"), own_results):
                # This evaluation writes the reference: the model is the retain model, compared with itself.
                if resolved.get("reference_suite") not in (None, suite_name):
                    raise ValueError(
                        f"suite {suite_name!r}: forget_quality's reference is this evaluation's own results, so its "
                        f"reference_suite must be this suite, not {resolved['reference_suite']!r}"
                    )
                resolved["reference"] = _own_truth_ratios(suite_out, ctx, data[suite_name])
                resolved.setdefault("reference_base", base_model)
                note = f"the reference is this evaluation's own results ({own_results}): this is the retain model"
            elif metric_name == "mia" and _is_file(resolved.get("retain_auc"), own_results):
                resolved.pop("retain_auc")  # the retain model itself: privleak against itself is 0, not computed
                note = f"retain_auc is this evaluation's own results ({own_results}): this is the retain model"
            key_obj = [
                CACHE_VERSION,
                model_key,
                metric_name,
                _canonical(resolved, data),
                data_hash(data[suite_name]),
                settings,
                ref_identity() if spec.needs_reference else None,
            ]
            entry_path = cache_dir / f"{metric_name}-{_sha(key_obj)[:32]}.json"
            cached = _read_json(entry_path) if cache else None
            if isinstance(cached, dict) and "per_item" in cached:
                result, was_cached = MetricResult.from_json(cached), True
            else:
                result, was_cached = compute_metric(metric_name, ctx, data[suite_name], **resolved), False
                if cache:
                    write_json_atomic(entry_path, result.to_json())
            suite_out[out_key] = {**result.to_json(), "options": _canonical(options, data), "cached": was_cached}
            if note is not None:
                suite_out[out_key]["note"] = note
        results["suites"][suite_name] = suite_out
    try:  # TOFU model utility whenever the three utility suites were evaluated with their metrics
        results["model_utility"] = tofu_model_utility(results)
    except ValueError:
        pass
    write_json_atomic(out_dir / RESULTS_FILE, results)
    return json_safe(results)


def _base_model(model: Any) -> str | None:
    """The base model of a spec or loaded model (None for a module without a config, which no rule can name)."""
    from mollm.models.loading import base_model_identity

    try:
        return base_model_identity(model)
    except TypeError:
        return None


def _check_reference_base_early(metric: str, options: Mapping[str, Any], base_model: str, own_results: Path) -> None:
    """Refuse a logged reference from another base model before any model is loaded or any result is taken from the
    cache (the metric checks again against the loaded model when it runs)."""
    from mollm.evaluation.reference_logs import (
        check_reference_base,
        read_reference_mia_auc,
        read_reference_truth_ratios,
    )

    if options.get("allow_other_base"):
        return  # forced: the metric warns when it runs
    if metric == "forget_quality" and "reference" in options and not _is_file(options["reference"], own_results):
        ref = read_reference_truth_ratios(options["reference"], suite=options.get("reference_suite"))
    elif metric == "mia" and options.get("retain_auc") is not None and not _is_file(options["retain_auc"], own_results):
        ref = read_reference_mia_auc(options["retain_auc"], suite=options.get("retain_suite"))
    else:
        return
    check_reference_base(metric, base_model, ref, reference_base=options.get("reference_base"))


def _is_file(value: Any, target: Path) -> bool:
    return isinstance(value, (str, os.PathLike)) and Path(value).expanduser().resolve() == target


def _own_truth_ratios(suite_out: Mapping[str, Any], ctx: EvalContext, records: list[QARecord]) -> list[float]:
    """This model's per-item truth ratios on ``records``: a ``truth_ratio`` result of the suite, else computed."""
    for entry in suite_out.values():
        if entry.get("name") == "truth_ratio":
            return [float(v) for v in entry["per_item"]]
    return compute_metric("truth_ratio", ctx, records).per_item


def tofu_model_utility(
    results: Mapping[str, Any], suites: Sequence[str] = ("retain", "real_authors", "world_facts")
) -> dict[str, Any]:
    """TOFU model utility from an :func:`evaluate` result: the harmonic mean of, per suite in ``suites``, the
    probability (``normalized_probability`` if present, else ``probability``), ``rouge_l`` and ``truth_ratio``
    (run with ``kind="retain"``) aggregate values. Returns ``{"value", "parts": {"suite/metric": number}}``."""
    from mollm.evaluation.stats import model_utility

    parts: dict[str, float] = {}
    all_suites = results.get("suites", {})
    for suite in suites:
        got = all_suites.get(suite)
        if not isinstance(got, Mapping):
            raise ValueError(f"model utility: results have no suite {suite!r} (have: {sorted(all_suites)})")
        prob = "normalized_probability" if "normalized_probability" in got else "probability"
        for metric in (prob, "rouge_l", "truth_ratio"):
            entry = got.get(metric)
            if not isinstance(entry, Mapping) or entry.get("aggregate", {}).get("value") is None:
                raise ValueError(f"model utility: suite {suite!r} lacks metric {metric!r}")
            if metric == "truth_ratio" and entry.get("options", {}).get("kind") != "retain":
                raise ValueError(f"model utility: suite {suite!r} truth_ratio must be run with kind='retain'")
            parts[f"{suite}/{metric}"] = float(entry["aggregate"]["value"])
    return {"value": model_utility(parts, expected=3 * len(suites)), "parts": parts}
