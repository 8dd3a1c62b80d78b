"""Pure text metrics: ROUGE-L recall, n-gram entropy, repetition and degenerate-output detection.

Tokenisation for entropy and repetition is :func:`words`: lower-cased runs of word characters, and every other
non-space character on its own (so ``",,,,"`` is four tokens and counts as repetition, and ``"|||"`` likewise).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)

#: Default threshold of :func:`is_degenerate`: more than half of the 3-grams repeat an earlier 3-gram.
DEGENERATE_REPETITION = 0.5
DEGENERATE_N = 3
DEGENERATE_WHITESPACE = 0.5  # English prose is ~15-20 % whitespace


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # TOFU scores with rouge_scorer.RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` against ``reference``: LCS length / reference length (in tokens).

    Same scorer settings as TOFU (``rouge-score``, Porter stemming); an empty reference scores 0.
    """
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError(
            f"rouge_l_recall expects two strings, got {type(prediction).__name__}, {type(reference).__name__}"
        )
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].recall)


def words(text: str) -> list[str]:
    """Lower-cased tokens used by the entropy and repetition metrics (words; punctuation one char each)."""
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_entropy(text: str, n: int = 2) -> float:
    """Shannon entropy (nats) of the empirical distribution of the ``n``-grams of ``text``.

    0 for a text repeating one n-gram (or having fewer than ``n`` tokens); ``log(k)`` for ``k`` distinct,
    equally frequent n-grams. Low values flag repetition; word salad keeps a high entropy (use perplexity for it).
    """
    grams = _ngrams(words(text), n)
    if not grams:
        return 0.0
    total = len(grams)
    h = -sum((c / total) * math.log(c / total) for c in Counter(grams).values())
    return max(h, 0.0)  # -0.0 from a single n-gram


def repetition_rate(text: str, n: int = DEGENERATE_N) -> float:
    """Fraction of the ``n``-grams of ``text`` that repeat an earlier one: ``1 - distinct / total`` (0 if none)."""
    grams = _ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_degenerate(text: str, *, threshold: float = DEGENERATE_REPETITION, n: int = DEGENERATE_N) -> bool:
    """Whether a generation is degenerate: empty / whitespace only, mostly whitespace (more than half of its
    characters, e.g. ``"1\n\n\n\n..."``: one token, then the model only emits newlines), or its ``n``-gram
    repetition rate exceeds ``threshold`` (default: more than half of the 3-grams repeat an earlier one, e.g.
    ``"A 10 10 10 ..."`` or ``",,,,,,"``). Otherwise a text shorter than ``n`` tokens is not degenerate.
    Word salad is not caught here; the perplexity under the reference model catches it.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    tokens = words(text)
    if not tokens:
        return True
    if sum(c.isspace() for c in text) > DEGENERATE_WHITESPACE * len(text):
        return True
    return repetition_rate(text, n) > threshold
