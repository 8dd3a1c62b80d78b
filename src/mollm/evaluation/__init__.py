"""Evaluation: a registry of metrics (TOFU, membership inference, fluency, normal-data utility), batched greedy
generation, ``evaluate`` with cached per-item results, and training-side metrics from ``metrics.jsonl``.

Definitions follow ``shared/notes/metrics.md``; pure functions live in :mod:`.text` and :mod:`.stats`,
model-based per-item scores in :mod:`.scoring`.
"""

from mollm.evaluation.evaluate import data_hash, evaluate, model_identity, tofu_model_utility, write_json_atomic
from mollm.evaluation.generation import generate
from mollm.evaluation.reference_logs import ReferenceLogError, load_reference_truth_ratios, read_tofu_log
from mollm.evaluation.registry import (
    EvalContext,
    MetricResult,
    MetricSpec,
    available_metrics,
    compute_metric,
    get_metric,
    register,
)
from mollm.evaluation.stats import (
    auc,
    extraction_strength,
    forget_quality,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    normalized_probability,
    privleak,
    truth_ratio,
    truth_ratio_score,
    zlib_score,
)
from mollm.evaluation.text import is_degenerate, ngram_entropy, repetition_rate, rouge_l_recall
from mollm.evaluation.training import training_metrics

__all__ = [
    "EvalContext",
    "MetricResult",
    "MetricSpec",
    "ReferenceLogError",
    "auc",
    "available_metrics",
    "compute_metric",
    "data_hash",
    "evaluate",
    "extraction_strength",
    "forget_quality",
    "generate",
    "get_metric",
    "is_degenerate",
    "load_reference_truth_ratios",
    "min_k_plus_plus_score",
    "min_k_score",
    "model_identity",
    "model_utility",
    "ngram_entropy",
    "normalized_probability",
    "privleak",
    "read_tofu_log",
    "register",
    "repetition_rate",
    "rouge_l_recall",
    "tofu_model_utility",
    "training_metrics",
    "truth_ratio",
    "truth_ratio_score",
    "write_json_atomic",
    "zlib_score",
]
