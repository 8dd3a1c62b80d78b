"""The in-run evaluation: per data set, answer NLL, probability, perplexity and (optionally) answer accuracy.

Kept small on purpose: it runs before, every N steps and after a run. The full metric suite (TOFU, membership
inference, harmful rate, fluency) lives in :mod:`mollm.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mollm.core.device import model_device
from mollm.data.encode import PromptFormat, encode_batch
from mollm.data.records import QARecord
from mollm.objectives.base import token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def answer_nll(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[QARecord],
    *,
    fmt: PromptFormat,
    max_length: int,
    batch_size: int = 8,
) -> list[float]:
    """Mean answer-token NLL of each record under ``model`` (teacher forcing)."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    device = model_device(model)
    for i in range(0, len(records), batch_size):
        batch = encode_batch(records[i : i + batch_size], tokenizer, fmt, max_length, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, mask = token_logprobs(logits, batch["labels"])
        out.extend((-(logp.sum(1)) / mask.sum(1)).tolist())
    model.train(was_training)
    return out


def _contains(response: str, answer: str) -> bool:
    return answer.strip().lower().rstrip(".") in response.lower()


def evaluate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Sequence[QARecord]],
    *,
    fmt: PromptFormat,
    max_length: int,
    accuracy: bool = True,
    max_new_tokens: int = 24,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Evaluate each named data set; keys look like ``forget_nll``, ``forget_prob``, ``forget_acc``, ``forget_ppl``."""
    from mollm.evaluation.generation import generate

    result: dict[str, Any] = {}
    for name, records in tqdm(datasets.items(), desc=desc, disable=not progress, unit="set"):
        nll = answer_nll(model, tokenizer, records, fmt=fmt, max_length=max_length)
        mean_nll = sum(nll) / len(nll)
        result[f"{name}_nll"] = mean_nll
        result[f"{name}_prob"] = sum(math.exp(-x) for x in nll) / len(nll)
        result[f"{name}_ppl"] = math.exp(min(mean_nll, 50.0))
        if accuracy:
            responses = generate(
                model, tokenizer, [r.question for r in records], fmt=fmt, max_new_tokens=max_new_tokens, progress=False
            )
            hits = [_contains(resp, r.answer) for resp, r in zip(responses, records)]
            result[f"{name}_acc"] = sum(hits) / len(hits)
            result.setdefault("samples", {})[name] = [
                {"question": r.question, "answer": r.answer, "response": resp}
                for r, resp in list(zip(records, responses))[:5]
            ]
    return result
