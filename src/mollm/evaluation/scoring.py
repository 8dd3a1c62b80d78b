"""Model-based per-item metrics: teacher-forced answer scores (NLL, probability, truth ratio, MIA, extraction
strength, KL to a reference) and generation-based ones (ROUGE-L, perplexity of generations under a reference).

Every function takes a Hugging Face causal LM, its tokenizer and a list of :class:`~mollm.data.records.QARecord`,
encodes them exactly as training does (:func:`mollm.data.encode.encode_batch`: prompt from ``fmt``, answer + EOS,
only answer tokens scored) and returns one value per record, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from mollm.core.device import model_device, to_device
from mollm.core.tokens import IGNORE_INDEX
from mollm.data.encode import DataError, PromptFormat, collate, encode_batch
from mollm.data.records import QARecord
from mollm.evaluation import stats
from mollm.evaluation.generation import _pad_id, generate
from mollm.evaluation.text import rouge_l_recall

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mollm.models.reference import Reference

MIA_ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus")


@dataclass(frozen=True)
class AnswerScores:
    """Teacher-forced statistics of one answer (one entry per scored answer token, EOS included)."""

    logprobs: np.ndarray  # log p(y_t | x, y_<t)
    target_ids: np.ndarray
    argmax_ids: np.ndarray
    mu: np.ndarray | None = None  # E_z[log p(z)] under the model's next-token distribution (Min-K%++)
    sigma: np.ndarray | None = None  # its standard deviation
    kl: np.ndarray | None = None  # KL(p_ref || p_model) per position

    @property
    def avg_nll(self) -> float:
        """Mean answer-token NLL."""
        return float(-self.logprobs.mean())


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a plain model or of a :class:`~mollm.models.reference.Reference`."""
    if hasattr(model, "logits") and callable(model.logits) and not isinstance(model, torch.nn.Module):
        return model.logits(batch)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _module(model: torch.nn.Module) -> torch.nn.Module:
    return model if isinstance(model, torch.nn.Module) else model._model  # Reference keeps its module there


@torch.no_grad()
def _score_batches(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batches,
    n_items: int,
    *,
    reference: torch.nn.Module | Reference | None = None,
    distribution: bool = False,
    progress: bool = True,
    desc: str = "score",
) -> list[AnswerScores]:
    module = _module(model)
    device = model_device(module)
    was_training = module.training
    module.eval()
    out: list[AnswerScores] = []
    try:
        bar = tqdm(total=n_items, desc=desc, unit="item", disable=not progress, leave=False)
        for batch in batches:
            batch = to_device(batch, device)
            logits = _logits(model, batch)[:, :-1]
            labels = batch["labels"][:, 1:]
            mask = labels.ne(IGNORE_INDEX)
            counts = mask.sum(1).tolist()
            # Only answer positions matter: select them first so (tokens, V) tensors stay small.
            sel = logits[mask].float()
            logp_all = torch.log_softmax(sel, dim=-1)
            targets = labels[mask]
            lp = logp_all.gather(1, targets[:, None]).squeeze(1)
            argmax = sel.argmax(-1)
            mu = sigma = kl = None
            if distribution:
                p = logp_all.exp()
                mu = (p * logp_all).sum(-1)
                sigma = ((p * logp_all.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
            if reference is not None:
                ref_logp = torch.log_softmax(_logits(reference, batch)[:, :-1][mask].float(), dim=-1)
                kl = (ref_logp.exp() * (ref_logp - logp_all)).sum(-1).clamp_min(0)
            parts = {
                "logprobs": lp,
                "target_ids": targets,
                "argmax_ids": argmax,
                "mu": mu,
                "sigma": sigma,
                "kl": kl,
            }
            split = {k: (None if v is None else torch.split(v.cpu(), counts)) for k, v in parts.items()}
            for i in range(len(counts)):
                out.append(
                    AnswerScores(
                        **{
                            k: (
                                None
                                if v is None
                                else v[i]
                                .numpy()
                                .astype(np.float64 if k not in ("target_ids", "argmax_ids") else np.int64)
                            )
                            for k, v in split.items()
                        }
                    )
                )
            bar.update(len(counts))
        bar.close()
    finally:
        module.train(was_training)
    return out


def score_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    fmt: PromptFormat = PromptFormat(),
    batch_size: int = 8,
    max_length: int = 256,
    reference: torch.nn.Module | Reference | None = None,
    distribution: bool = False,
    progress: bool = True,
    desc: str = "score",
) -> list[AnswerScores]:
    """Teacher-forced :class:`AnswerScores` of each record's answer under ``model`` (one forward per batch).

    ``distribution=True`` adds the Min-K%++ statistics; ``reference`` (a model or
    :class:`~mollm.models.reference.Reference`) adds the per-token KL(p_ref || p_model).
    """
    records = list(records)
    # Batch records of similar length so little of each batch is padding (the longest first: a batch that does not
    # fit in memory fails at once); scores come back in the caller's order.
    order = sorted(range(len(records)), key=lambda i: -(len(records[i].question) + len(records[i].answer)))
    batches = (
        encode_batch([records[j] for j in order[i : i + batch_size]], tokenizer, fmt, max_length)
        for i in range(0, len(records), batch_size)
    )
    scores = _score_batches(
        model,
        tokenizer,
        batches,
        len(records),
        reference=reference,
        distribution=distribution,
        progress=progress,
        desc=desc,
    )
    out: list[AnswerScores | None] = [None] * len(records)
    for j, score in zip(order, scores):
        out[j] = score
    return out  # type: ignore[return-value]  # every slot is filled: order is a permutation


def _with_answer(record: QARecord, answer: str, field: str) -> QARecord:
    return QARecord(question=record.question, answer=answer, source=f"{record.source or 'record'} [{field}]")


def _perturbed(record: QARecord) -> list[str]:
    value = record.extra.get("perturbed_answer")
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)):
        raise DataError(
            f"{record.source or 'record'}: field 'perturbed_answer' must be a non-empty list of strings "
            "(needed for truth ratio / normalised probability)"
        )
    return value


#: Mean answer NLLs already computed for one model and one set of scoring settings, keyed by (question, answer).
NllMemo = dict[tuple[str, str], float]


def _avg_nlls(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    memo: NllMemo | None = None,
    **kw,
) -> np.ndarray:
    if memo is None:
        return np.array([s.avg_nll for s in score_answers(model, tokenizer, records, **kw)], dtype=np.float64)
    # Score each (question, answer) pair once: TOFU's metrics ask for the same answers several times.
    missing = list({(r.question, r.answer): r for r in records if (r.question, r.answer) not in memo}.values())
    if missing:
        for r, s in zip(missing, score_answers(model, tokenizer, missing, **kw)):
            memo[(r.question, r.answer)] = s.avg_nll
    return np.array([memo[(r.question, r.answer)] for r in records], dtype=np.float64)


def answer_nll(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    memo: NllMemo | None = None,
    **kw,
) -> np.ndarray:
    """Mean answer-token NLL per record (keywords as :func:`score_answers`). ``memo`` reuses and stores scores; it
    must belong to this model and these keywords."""
    return _avg_nlls(model, tokenizer, records, memo=memo, **kw)


def answer_probability(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    memo: NllMemo | None = None,
    **kw,
) -> np.ndarray:
    """Length-normalised answer probability ``exp(-avg NLL)`` per record (``memo`` as :func:`answer_nll`)."""
    return np.exp(-answer_nll(model, tokenizer, records, memo=memo, **kw))


def _flat_perturbed(records: Sequence[QARecord]) -> tuple[list[QARecord], list[int]]:
    flat: list[QARecord] = []
    sizes: list[int] = []
    for r in records:
        alts = _perturbed(r)
        flat.extend(_with_answer(r, a, f"perturbed_answer[{j}]") for j, a in enumerate(alts))
        sizes.append(len(alts))
    return flat, sizes


def _grouped(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes else []


def truth_ratios(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    memo: NllMemo | None = None,
    **kw,
) -> np.ndarray:
    """Per-record truth ratio from ``extra['paraphrased_answer']`` (the answer itself when absent, as TOFU does for
    real authors / world facts) and the list ``extra['perturbed_answer']``; see :func:`stats.truth_ratio`
    (``memo`` as :func:`answer_nll`)."""
    records = list(records)
    para = [_with_answer(r, r.extra.get("paraphrased_answer") or r.answer, "paraphrased_answer") for r in records]
    flat, sizes = _flat_perturbed(records)
    para_nll = _avg_nlls(model, tokenizer, para, memo=memo, desc="paraphrased", **kw)
    pert_nll = _grouped(_avg_nlls(model, tokenizer, flat, memo=memo, desc="perturbed", **kw), sizes)
    return np.array([stats.truth_ratio(a, b) for a, b in zip(para_nll, pert_nll)], dtype=np.float64)


def normalized_probabilities(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    memo: NllMemo | None = None,
    **kw,
) -> np.ndarray:
    """TOFU's probability on perturbed sets per record: p(answer) / (p(answer) + sum p(perturbed)) (``memo`` as
    :func:`answer_nll`)."""
    records = list(records)
    flat, sizes = _flat_perturbed(records)
    true_nll = _avg_nlls(model, tokenizer, records, memo=memo, **kw)
    pert_nll = _grouped(_avg_nlls(model, tokenizer, flat, memo=memo, desc="perturbed", **kw), sizes)
    return np.array([stats.normalized_probability(a, b) for a, b in zip(true_nll, pert_nll)], dtype=np.float64)


def extraction_strengths(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, records: Sequence[QARecord], **kw
) -> np.ndarray:
    """Extraction strength per record from the teacher-forced argmax (see :func:`stats.extraction_strength`)."""
    return np.array(
        [stats.extraction_strength(s.target_ids, s.argmax_ids) for s in score_answers(model, tokenizer, records, **kw)],
        dtype=np.float64,
    )


def mia_scores(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, records: Sequence[QARecord], *, k: float = 0.4, **kw
) -> dict[str, np.ndarray]:
    """Membership scores (higher = more member-like) per record for the LOSS, zlib, Min-K% and Min-K%++ attacks,
    computed on the answer tokens."""
    records = list(records)
    scores = score_answers(model, tokenizer, records, distribution=True, desc="mia", **kw)
    out = {
        "loss": [stats.loss_score(s.logprobs) for s in scores],
        "zlib": [stats.zlib_score(s.logprobs, r.answer) for s, r in zip(scores, records)],
        "min_k": [stats.min_k_score(s.logprobs, k) for s in scores],
        "min_k_plus_plus": [stats.min_k_plus_plus_score(s.logprobs, s.mu, s.sigma, k) for s in scores],
    }
    return {name: np.array(v, dtype=np.float64) for name, v in out.items()}


def nll_and_kl(
    model: torch.nn.Module,
    reference: torch.nn.Module | Reference,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-record mean answer NLL under ``model`` and mean per-token KL(p_ref || p_model) over answer tokens."""
    scores = score_answers(model, tokenizer, records, reference=reference, desc="nll/kl", **kw)
    nll = np.array([s.avg_nll for s in scores], dtype=np.float64)
    kl = np.array([float(s.kl.mean()) for s in scores], dtype=np.float64)
    return nll, kl


def rouge_l_recalls(generations: Sequence[str], records: Sequence[QARecord]) -> np.ndarray:
    """ROUGE-L recall of each generation against its record's answer."""
    if len(generations) != len(records):
        raise ValueError(f"{len(generations)} generations for {len(records)} records")
    return np.array([rouge_l_recall(g, r.answer) for g, r in zip(generations, records)], dtype=np.float64)


def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    fmt: PromptFormat = PromptFormat(),
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """Greedy generations for each record's question, exactly as generated (not stripped: fluency scores them under
    the reference model; see :func:`~mollm.evaluation.generation.generate`)."""
    return generate(
        model,
        tokenizer,
        [r.question for r in records],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        fmt=fmt,
        progress=progress,
        strip=False,
    )


def generation_perplexity(
    reference: torch.nn.Module | Reference,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    generations: Sequence[str],
    *,
    fmt: PromptFormat = PromptFormat(),
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = True,
) -> list[float | None]:
    """Perplexity of each generation (its tokens, no EOS added) given its prompt under ``reference`` (a model or
    :class:`~mollm.models.reference.Reference`); ``None`` for an empty generation (counted by the degenerate rate)."""
    if len(questions) != len(generations):
        raise ValueError(f"{len(generations)} generations for {len(questions)} questions")
    pad = _pad_id(tokenizer)
    examples: list[dict[str, list[int]]] = []
    keep: list[int] = []
    for i, (q, g) in enumerate(zip(questions, generations)):
        if not g.strip():
            continue
        prompt_ids = tokenizer(fmt.prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
        gen_ids = tokenizer(g, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + gen_ids)[:max_length]
        if len(ids) <= len(prompt_ids):
            continue
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        keep.append(i)
    batches = (collate(examples[j : j + batch_size], pad) for j in range(0, len(examples), batch_size))
    scores = _score_batches(reference, tokenizer, batches, len(examples), progress=progress, desc="perplexity")
    out: list[float | None] = [None] * len(questions)
    for i, s in zip(keep, scores):
        out[i] = float(np.exp(s.avg_nll))
    return out
