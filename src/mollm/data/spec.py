"""One string names a data set in configs: ``load_dataset_spec("tofu:/data/forget01.json")``.

Syntax: ``KIND:ARGUMENT[#OPTION]``, or a plain file path / Hugging Face id.

==============================================  ==================================================================
spec                                            records
==============================================  ==================================================================
``tofu:PATH``                                   a TOFU split (:func:`~mollm.data.readers.read_tofu`)
``truthfulqa:PATH[#train|val|test|all]``        TruthfulQA, one split of the seeded 70/10/20 split (default all);
                                                ``#train@SEED`` picks the split's seed (default 0)
``pku:PATH[#unsafe|safe|all]``                  PKU-SafeRLHF responses (default ``unsafe``: the forget set)
``pku:PATH#SELECTION/train|test[@SEED]``        one side of the seeded 60/40 split by prompt (seed 0 by default);
                                                ``unsafe_prompts`` etc.: each distinct prompt once
``facts:forget|retain|all[#KEY=V,...]``         built-in fictitious facts (:func:`~mollm.data.facts.make_facts`);
                                                keys ``n_people``, ``seed``, ``forget_fraction``
``hf:ID[#SPLIT]``                               a Hugging Face dataset (default split ``train``)
``file:PATH`` or ``PATH``                       a .jsonl/.json/.csv/.parquet file (:func:`load_records`); a plain
                                                string that is not an existing path is tried as a hub id
==============================================  ==================================================================

Only these kind names are treated as prefixes, so Windows paths such as ``C:\\data\\x.json`` stay plain paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mollm.core.errors import DataError
from mollm.core.registry import Registry, first_paragraph
from mollm.data.facts import make_facts
from mollm.data.loading import load_hub_dataset, load_records
from mollm.data.readers import PKU_PROMPT_SPLITS, read_pku_saferlhf, read_tofu, read_truthfulqa
from mollm.data.records import QARecord

_Reader = Callable[[str, str, str, "dict[str, str | None]"], list[QARecord]]

#: The spec kinds (``KIND:ARGUMENT[#OPTION]``): a reader ``(spec, argument, option, fields) -> records`` each.
DATA_KINDS: Registry[_Reader] = Registry("data kind")


def _kind(name: str, syntax: str) -> Callable[[_Reader], _Reader]:
    def deco(fn: _Reader) -> _Reader:
        return DATA_KINDS.add(name, fn, description=f"{syntax}: {first_paragraph(fn.__doc__)}")

    return deco


@_kind("tofu", "tofu:PATH")
def _tofu(spec: str, argument: str, option: str, fields: dict[str, str | None]) -> list[QARecord]:
    """A TOFU split (question, answer, and the perturbed answers when present)."""
    _no_option(spec, option)
    return read_tofu(argument)


@_kind("truthfulqa", "truthfulqa:PATH[#train|val|test|all][@SEED]")
def _truthfulqa(spec: str, argument: str, option: str, fields: dict[str, str | None]) -> list[QARecord]:
    """TruthfulQA, one split of the seeded 70/10/20 split (default all; seed 0)."""
    split_name, _, seed_text = (option or "all").partition("@")
    if split_name not in ("train", "val", "test", "all"):
        raise DataError(f"data spec {spec!r}: unknown TruthfulQA split {split_name!r}; expected train, val, test or all")
    seed = _int(spec, "seed", seed_text) if seed_text else 0
    split = None if split_name == "all" else split_name
    return read_truthfulqa(argument, split, seed=seed)  # type: ignore[arg-type]


@_kind("pku", "pku:PATH[#SELECTION[/train|test[@SEED]]]")
def _pku(spec: str, argument: str, option: str, fields: dict[str, str | None]) -> list[QARecord]:
    """PKU-SafeRLHF responses: ``unsafe`` (default; the forget set), ``safe`` or ``all``; ``unsafe_prompts`` (etc.)
    keeps each distinct prompt once (for generation-based evaluation); ``/train`` or ``/test`` keeps one side of the
    seeded 60/40 split by prompt (seed 0, or ``@SEED``)."""
    selection, _, split_text = (option or "unsafe").partition("/")
    which, per_prompt = selection.removesuffix("_prompts"), selection.endswith("_prompts")
    if which not in ("unsafe", "safe", "all"):
        raise DataError(
            f"data spec {spec!r}: unknown PKU-SafeRLHF selection {selection!r}; expected unsafe, safe or all "
            "(or unsafe_prompts, safe_prompts, all_prompts: each prompt once)"
        )
    prompts, seed = None, 0
    if split_text:
        prompts, _, seed_text = split_text.partition("@")
        if prompts not in PKU_PROMPT_SPLITS:
            raise DataError(f"data spec {spec!r}: unknown PKU-SafeRLHF prompt split {prompts!r}; expected train or test")
        seed = _int(spec, "seed", seed_text) if seed_text else 0
    return read_pku_saferlhf(  # type: ignore[arg-type]
        argument, which=which, prompts=prompts, seed=seed, one_per_prompt=per_prompt
    )


@_kind("facts", "facts:forget|retain|all[#n_people=N,seed=S,forget_fraction=F]")
def _facts_kind(spec: str, argument: str, option: str, fields: dict[str, str | None]) -> list[QARecord]:
    """The built-in fictitious facts (:func:`~mollm.data.facts.make_facts`)."""
    return _facts(spec, argument, option)


@_kind("hf", "hf:ID[#SPLIT]")
def _hf(spec: str, argument: str, option: str, fields: dict[str, str | None]) -> list[QARecord]:
    """A Hugging Face dataset (default split ``train``); ``question_field``/``answer_field`` pick the columns."""
    return load_hub_dataset(argument, split=option or "train", **fields)


@_kind("file", "file:PATH or PATH")
def _file(spec: str, argument: str, option: str, fields: dict[str, str | None]) -> list[QARecord]:
    """A .jsonl/.json/.csv/.parquet file (:func:`~mollm.data.loading.load_records`)."""
    _no_option(spec, option)
    return load_records(Path(argument), **fields)


def load_dataset_spec(
    spec: str | Path,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> list[QARecord]:
    """Load the records a spec string names (syntax in this module's docstring).

    ``question_field``/``answer_field`` apply to plain files and hub datasets only; ``limit`` keeps the first records.
    Raises :class:`DataError` for an unknown option, naming the spec and the accepted values.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    fields = {"question_field": question_field, "answer_field": answer_field}
    if isinstance(spec, Path):
        return load_records(spec, limit=limit, **fields)
    text = spec.strip()
    if not text:
        raise DataError("empty data spec; expected e.g. 'tofu:PATH', 'facts:forget' or a file path")
    kind, sep, rest = text.partition(":")
    if not sep or kind.lower() not in DATA_KINDS:
        return load_records(text, limit=limit, **fields)
    argument, _, option = rest.rpartition("#") if "#" in rest else (rest, "", "")
    if not argument:
        raise DataError(f"data spec {spec!r}: nothing after '{kind}:'; expected a path or name")
    records = DATA_KINDS.entry(kind.lower()).target(spec, argument, option, fields)
    return records[:limit] if limit is not None else records


def _facts(spec: str, split: str, option: str) -> list[QARecord]:
    kwargs: dict[str, float | int] = {}
    for item in filter(None, (p.strip() for p in option.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in ("n_people", "seed", "forget_fraction"):
            raise DataError(
                f"data spec {spec!r}: unknown facts option {item!r}; expected n_people=, seed=, forget_fraction="
            )
        kwargs[key] = _float(spec, key, value) if key == "forget_fraction" else _int(spec, key, value)
    try:
        facts = make_facts(**kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        raise DataError(f"data spec {spec!r}: {e}") from e
    if split == "forget":
        return facts.forget
    if split == "retain":
        return facts.retain
    if split == "all":
        return facts.all
    raise DataError(f"data spec {spec!r}: unknown facts split {split!r}; expected forget, retain or all")


def _no_option(spec: str, option: str) -> None:
    if option:
        raise DataError(f"data spec {spec!r}: this kind takes no '#{option}' option")


def _int(spec: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"data spec {spec!r}: {key} must be an integer, got {value!r}") from None


def _float(spec: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"data spec {spec!r}: {key} must be a number, got {value!r}") from None
