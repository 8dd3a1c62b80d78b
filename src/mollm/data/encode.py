"""Turn question-answer records into token batches whose labels mask everything but the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from mollm.core.device import to_device
from mollm.core.errors import DataError
from mollm.core.tokens import IGNORE_INDEX
from mollm.data.records import QARecord

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PLAIN_TEMPLATE = "### Question: {question}\n ### Answer: "


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt: the tokenizer's chat template or a plain ``{question}`` template."""

    kind: Literal["chat", "plain"] = "plain"
    template: str = PLAIN_TEMPLATE

    def prompt(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        if self.kind == "chat" and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
        return self.template.format(question=question)


def encode_record(
    record: QARecord, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat = PromptFormat(), max_length: int = 256
) -> dict[str, list[int]]:
    """Tokenise one record: prompt tokens then answer tokens (+ EOS); labels are -100 on the prompt.

    Truncation cuts the answer's end; an answer cut away entirely is a :class:`DataError` naming the record.
    """
    (encoded,) = encode_many([record], tokenizer, fmt, max_length)
    if isinstance(encoded, DataError):
        raise encoded
    return encoded


def encode_many(
    records: Sequence[QARecord],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat = PromptFormat(),
    max_length: int = 256,
) -> list[dict[str, list[int]] | DataError]:
    """:func:`encode_record` for every record, in order; a record that cannot be encoded is its :class:`DataError`.

    Prompts and answers go to the tokenizer as two lists (its batch path): one call per record costs ~10x more on
    the Python side, which dominated the pre-run check of a large dataset.
    """
    prompts = {q: fmt.prompt(tokenizer, q) for q in dict.fromkeys(r.question for r in records)}
    prompt_ids = dict(zip(prompts, _token_ids(tokenizer, list(prompts.values()))))
    answer_ids = _token_ids(tokenizer, [r.answer for r in records])
    eos = tokenizer.eos_token_id
    return [_assemble(r, prompt_ids[r.question], a, eos, max_length) for r, a in zip(records, answer_ids)]


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []


def _assemble(
    record: QARecord, prompt_ids: list[int], answer_ids: list[int], eos: int | None, max_length: int
) -> dict[str, list[int]] | DataError:
    if eos is not None:
        answer_ids = answer_ids + [eos]
    ids = (prompt_ids + answer_ids)[:max_length]
    n_answer = len(ids) - len(prompt_ids)
    if n_answer <= 0 or not record.answer.strip():
        where = record.source or "record"
        return DataError(
            f"{where}: field 'answer' leaves no answer token after truncation to max_length={max_length} "
            f"(prompt has {len(prompt_ids)} tokens, answer {len(answer_ids)}); raise max_length or shorten the prompt"
        )
    labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def collate(
    examples: Sequence[dict[str, list[int]]], pad_token_id: int, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into a batch of long tensors, on ``device`` when given (see :mod:`mollm.core.device`)."""
    width = max(len(e["input_ids"]) for e in examples)
    out = {
        "input_ids": torch.full((len(examples), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
        "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),
    }
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        for key in out:
            out[key][i, :n] = torch.tensor(e[key], dtype=torch.long)
    return out if device is None else to_device(out, device)


def encode_batch(
    records: Sequence[QARecord],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat = PromptFormat(),
    max_length: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Encode and collate ``records`` in one call (on ``device`` when given)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = encode_many(records, tokenizer, fmt, max_length)
    for e in examples:
        if isinstance(e, DataError):
            raise e
    return collate(examples, pad, device)  # type: ignore[arg-type]  # (every DataError was raised above)
