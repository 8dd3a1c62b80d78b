"""Question-answer data: loading files and hub datasets, readers for TOFU / TruthfulQA / PKU-SafeRLHF, built-in
fictitious facts for the demo, and encoding into answer-only-labelled token batches.

Configs name data sets with one string, see :func:`load_dataset_spec` (``"tofu:PATH"``, ``"truthfulqa:PATH#train"``,
``"pku:PATH#unsafe"``, ``"facts:forget"``, ``"hf:ID#split"`` or a plain file path).
"""

from mollm.data.encode import PLAIN_TEMPLATE, DataError, PromptFormat, collate, encode_batch, encode_many, encode_record
from mollm.data.facts import ATTRIBUTES, FactSet, Person, make_facts
from mollm.data.loading import ANSWER_FIELDS, QUESTION_FIELDS, load_hub_dataset, load_records
from mollm.data.readers import (
    LabelledResponse,
    pku_prompt_split,
    read_pku_labelled,
    read_pku_saferlhf,
    read_tofu,
    read_tofu_refusals,
    read_truthfulqa,
    truthfulqa_split_indices,
)
from mollm.data.records import QARecord
from mollm.data.spec import DATA_KINDS, load_dataset_spec

__all__ = [
    "ANSWER_FIELDS",
    "ATTRIBUTES",
    "PLAIN_TEMPLATE",
    "QUESTION_FIELDS",
    "DATA_KINDS",
    "DataError",
    "FactSet",
    "LabelledResponse",
    "Person",
    "PromptFormat",
    "QARecord",
    "collate",
    "encode_batch",
    "encode_many",
    "encode_record",
    "load_dataset_spec",
    "load_hub_dataset",
    "load_records",
    "make_facts",
    "pku_prompt_split",
    "read_pku_labelled",
    "read_pku_saferlhf",
    "read_tofu",
    "read_tofu_refusals",
    "read_truthfulqa",
    "truthfulqa_split_indices",
]
