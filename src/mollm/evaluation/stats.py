"""Pure numeric metrics (TOFU / open-unlearning definitions; see ``shared/notes/metrics.md``).

Everything here takes plain numbers (average NLLs, token log-probabilities, scores) so it can be checked by hand.
Conventions:

- an *average NLL* is the mean negative log-probability per answer token (natural log), so ``exp(-avg_nll)`` is the
  length-normalised probability ``p^(1/|y|)``;
- truth ratio ``TR = p(perturbed)^(1/|.|) / p(paraphrased)^(1/|.|)`` with the perturbed answers combined by their
  geometric mean, i.e. ``TR = exp(avg_nll(paraphrased) - mean_j avg_nll(perturbed_j))`` — exactly TOFU's stored
  ``truth_ratio``. A model that knows the answer has TR < 1;
- membership-inference scores are oriented so that *higher means more likely a member* (seen in training); AUC is
  then the probability that a random forget item scores above a random holdout item (1.0 = fully memorised, 0.5 =
  indistinguishable).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

TruthRatioKind = str  # "forget" or "retain"


def _finite_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value, got none")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: value at index {bad} is not finite ({arr[bad]})")
    return arr


# --- probability and truth ratio -------------------------------------------------------------------------------


def probability(avg_nll: float) -> float:
    """Length-normalised probability ``exp(-avg_nll)`` of an answer."""
    return math.exp(-float(avg_nll))


def normalized_probability(answer_avg_nll: float, perturbed_avg_nlls: Sequence[float]) -> float:
    """TOFU's probability on perturbed sets: ``p_correct / (p_correct + sum_j p_wrong_j)`` with length-normalised
    probabilities ``p = exp(-avg_nll)``."""
    wrong = _finite_array(perturbed_avg_nlls, "perturbed_avg_nlls")
    # Shift by the smallest NLL so that very improbable answers do not underflow to 0/0.
    all_nll = np.concatenate([[float(answer_avg_nll)], wrong])
    p = np.exp(-(all_nll - all_nll.min()))
    return float(p[0] / p.sum())


def truth_ratio(paraphrased_avg_nll: float, perturbed_avg_nlls: Sequence[float]) -> float:
    """Per-item truth ratio ``exp(avg_nll(paraphrased) - mean_j avg_nll(perturbed_j))`` (TOFU's ``truth_ratio``)."""
    wrong = _finite_array(perturbed_avg_nlls, "perturbed_avg_nlls")
    return float(math.exp(float(paraphrased_avg_nll) - float(wrong.mean())))


def truth_ratio_score(truth_ratios: Sequence[float], kind: TruthRatioKind) -> float:
    """Aggregate per-item truth ratios: ``kind="forget"``: mean(min(TR, 1/TR)) (1 = no preference between
    paraphrased and perturbed answers); ``kind="retain"`` (also real authors, world facts): mean(max(0, 1 - TR))."""
    tr = _finite_array(truth_ratios, "truth_ratios")
    if np.any(tr <= 0):
        raise ValueError("truth_ratios: every truth ratio must be > 0")
    if kind == "forget":
        return float(np.mean(np.minimum(tr, 1.0 / tr)))
    if kind == "retain":
        return float(np.mean(np.maximum(0.0, 1.0 - tr)))
    raise ValueError(f"kind must be 'forget' or 'retain', got {kind!r}")


def forget_quality(unlearned_truth_ratios: Sequence[float], retain_truth_ratios: Sequence[float]) -> dict[str, float]:
    """Forget quality: two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``, two-sided) between the per-item
    forget-set truth ratios of the unlearned model and of the retain model. Returns ``{"pvalue", "statistic"}``;
    the p-value is the forget quality (>= 0.05: indistinguishable from retraining). The test is invariant to
    taking 1/TR on both sides, so TOFU's orientation gives the same numbers."""
    from scipy.stats import ks_2samp

    a = _finite_array(unlearned_truth_ratios, "unlearned_truth_ratios")
    b = _finite_array(retain_truth_ratios, "retain_truth_ratios")
    res = ks_2samp(a, b)
    return {"pvalue": float(res.pvalue), "statistic": float(res.statistic)}


def model_utility(values: Mapping[str, float] | Sequence[float], *, expected: int | None = 9) -> float:
    """Harmonic mean of the utility numbers (TOFU: probability, ROUGE-L and truth-ratio score on retain, real
    authors and world facts = 9 numbers). Any value equal to 0 gives 0 (the harmonic mean's limit)."""
    named = dict(values) if isinstance(values, Mapping) else {str(i): v for i, v in enumerate(values)}
    if expected is not None and len(named) != expected:
        raise ValueError(f"model_utility: expected {expected} values, got {len(named)} ({sorted(named)})")
    for key, v in named.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"model_utility: value {key!r} must be a finite number >= 0, got {v!r}")
    arr = np.asarray(list(named.values()), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("model_utility: no values")
    if np.any(arr == 0):
        return 0.0
    return float(arr.size / np.sum(1.0 / arr))


# --- membership inference ----------------------------------------------------------------------------------------


def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack membership score: mean token log-probability (= -avg NLL; higher = member)."""
    return float(_finite_array(token_logprobs, "token_logprobs").mean())


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """zlib attack (Carlini et al. 2021): ``-avg_nll / len(zlib.compress(text))`` (higher = member)."""
    entropy = len(zlib.compress(text.encode("utf-8")))
    return loss_score(token_logprobs) / entropy


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K% (Shi et al. 2024): mean of the lowest ``k`` fraction of token log-probs (at least one token)."""
    lp = _finite_array(token_logprobs, "token_logprobs")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    n = max(1, int(len(lp) * k))
    return float(np.sort(lp)[:n].mean())


def min_k_plus_plus_score(
    token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float], k: float = 0.4
) -> float:
    """Min-K%++ (Zhang et al. 2024): per token ``z_t = (log p(x_t) - mu_t) / sigma_t`` with ``mu_t`` and ``sigma_t``
    the mean and standard deviation of ``log p(z)`` for ``z ~ p(.|x_<t)``; the score is the mean of the lowest ``k``
    fraction of ``z_t``. ``sigma_t`` is floored at 1e-8 (a one-hot distribution)."""
    lp = _finite_array(token_logprobs, "token_logprobs")
    m = _finite_array(mu, "mu")
    s = np.maximum(_finite_array(sigma, "sigma"), 1e-8)
    if not (lp.shape == m.shape == s.shape):
        raise ValueError(
            f"token_logprobs, mu, sigma must have one value per token, got {lp.shape}, {m.shape}, {s.shape}"
        )
    return min_k_score((lp - m) / s, k)


def auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of separating members (positives) from non-members with higher-is-member scores: the probability
    that a random member outscores a random non-member, ties counting one half (Mann–Whitney U / (n1 n0))."""
    pos = _finite_array(member_scores, "member_scores")
    neg = _finite_array(nonmember_scores, "nonmember_scores")
    from sklearn.metrics import roc_auc_score

    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    return float(roc_auc_score(labels, np.concatenate([pos, neg])))


def privleak(auc_model: float, auc_retain: float) -> float:
    """PrivLeak = ((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain) * 100 (0 = like the retain model; strongly
    negative = forget data still recognisable, i.e. under-unlearned)."""
    ref = 1.0 - float(auc_retain)
    if ref <= 0:
        raise ValueError(f"auc_retain must be < 1 for privleak, got {auc_retain}")
    return ((1.0 - float(auc_model)) - ref) / ref * 100.0


def extraction_strength(target_ids: Sequence[int], argmax_ids: Sequence[int]) -> float:
    """Extraction strength ``1 - k/|y|`` where ``k`` is the first position from which the teacher-forced argmax
    predictions reproduce the rest of the answer ``y`` (1 = the whole answer, 0 = not even the last token).
    Unlike open-unlearning's loop, a wrong last token gives 0, not 1/|y|."""
    y = list(target_ids)
    pred = list(argmax_ids)
    if len(y) != len(pred) or not y:
        raise ValueError(f"target_ids and argmax_ids must be equally long and non-empty, got {len(y)} and {len(pred)}")
    k = len(y)
    while k > 0 and y[k - 1] == pred[k - 1]:
        k -= 1
    return 1.0 - k / len(y)
