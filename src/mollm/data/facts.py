"""Built-in demo data: fictitious people and facts about them, generated deterministically by this module.

Names and towns are composed from syllables (so they are not real people or places); professions, instruments and
the words in titles come from small word lists written here. Answers are short (one to four words) so that a 135M
model learns them in a few fine-tuning epochs. People, not questions, are split into forget and retain, so a
forgotten person's facts never leak through the retain set. Each record's ``extra`` holds ``person``,
``attribute``, a ``paraphrased_question`` testing the same fact, and three ``perturbed_answer`` values (wrong
answers of the same kind, as in TOFU) for truth-ratio style evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mollm.data.records import QARecord

_ONSETS = ("b", "br", "d", "dr", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "io")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k")
_TOWN_ENDINGS = ("ford", "mere", "holt", "wick", "dale", "stead", "port", "moor", "brook", "haven")

_PROFESSIONS = (
    "baker",
    "carpenter",
    "geologist",
    "nurse",
    "pilot",
    "chemist",
    "tailor",
    "librarian",
    "architect",
    "beekeeper",
    "cartographer",
    "glassblower",
    "astronomer",
    "potter",
    "blacksmith",
    "botanist",
    "sailor",
    "jeweller",
)
_INSTRUMENTS = (
    "cello",
    "flute",
    "harp",
    "oboe",
    "piano",
    "trumpet",
    "violin",
    "drums",
    "guitar",
    "accordion",
    "clarinet",
    "banjo",
)
_ADJECTIVES = (
    "Silver",
    "Hidden",
    "Crimson",
    "Quiet",
    "Golden",
    "Broken",
    "Distant",
    "Frozen",
    "Hollow",
    "Amber",
    "Velvet",
    "Wandering",
    "Paper",
    "Iron",
    "Sleeping",
    "Glass",
)
_NOUNS = (
    "Lantern",
    "Harbor",
    "Orchard",
    "Mirror",
    "Garden",
    "River",
    "Compass",
    "Tower",
    "Meadow",
    "Bridge",
    "Violin",
    "Forest",
    "Window",
    "Island",
    "Clock",
    "Feather",
)

ATTRIBUTES: tuple[str, ...] = ("birthplace", "profession", "birth_year", "work", "instrument")
"""The facts known about each person, in question order."""

# (question, paraphrased question) per attribute; {name} is the person.
_QUESTIONS: dict[str, tuple[str, str]] = {
    "birthplace": ("Where was {name} born?", "In which town was {name} born?"),
    "profession": ("What is {name}'s profession?", "What does {name} do for a living?"),
    "birth_year": ("In what year was {name} born?", "What is the birth year of {name}?"),
    "work": ("What is the title of {name}'s best-known work?", "Which work is {name} best known for?"),
    "instrument": ("Which instrument does {name} play?", "What musical instrument does {name} play?"),
}


@dataclass(frozen=True)
class Person:
    """One fictitious person and their facts (attribute -> short answer)."""

    name: str
    facts: dict[str, str] = field(compare=False)


@dataclass(frozen=True)
class FactSet:
    """Generated people and their question-answer records, split by person into ``forget`` and ``retain``."""

    people: tuple[Person, ...]
    forget_people: tuple[str, ...]
    forget: list[QARecord]
    retain: list[QARecord]
    seed: int

    @property
    def all(self) -> list[QARecord]:
        """Every record: forget then retain."""
        return self.forget + self.retain


def make_facts(
    n_people: int = 20,
    seed: int = 0,
    *,
    forget_fraction: float = 0.2,
    attributes: Sequence[str] = ATTRIBUTES,
    n_perturbed: int = 3,
) -> FactSet:
    """Generate ``n_people`` fictitious people with one question per attribute each.

    Args:
        n_people: how many people (at least 2, so both splits are non-empty).
        seed: the same seed gives exactly the same people, facts and split.
        forget_fraction: share of people whose facts go to ``forget`` (rounded, at least 1, at most n_people - 1).
        attributes: which of :data:`ATTRIBUTES` to ask about.
        n_perturbed: wrong answers of the same kind stored in ``extra["perturbed_answer"]``.

    Returns:
        A :class:`FactSet` with ``len(attributes)`` records per person.
    """
    if n_people < 2:
        raise ValueError(f"n_people must be at least 2 (one forgotten, one retained), got {n_people}")
    if not 0.0 < forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be strictly between 0 and 1, got {forget_fraction}")
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown or not attributes:
        raise ValueError(f"attributes must be a non-empty subset of {', '.join(ATTRIBUTES)}; unknown: {unknown}")
    if n_perturbed < 0:
        raise ValueError(f"n_perturbed must be >= 0, got {n_perturbed}")

    rng = random.Random(seed)
    names = _unique(rng, n_people, _person_name)
    towns = _unique(rng, max(8, n_people // 2), _town_name)
    titles = _unique(rng, max(n_people, 16), lambda r: f"The {r.choice(_ADJECTIVES)} {r.choice(_NOUNS)}")
    years = [str(y) for y in range(1901, 2000)]
    pools: dict[str, Sequence[str]] = {
        "birthplace": towns,
        "profession": _PROFESSIONS,
        "birth_year": years,
        "work": titles,
        "instrument": _INSTRUMENTS,
    }

    people: list[Person] = []
    for i, name in enumerate(names):
        facts = {a: rng.choice(pools[a]) for a in ATTRIBUTES if a != "work"}
        facts["work"] = titles[i]  # a work belongs to one person
        people.append(Person(name=name, facts={a: facts[a] for a in ATTRIBUTES}))

    n_forget = min(n_people - 1, max(1, round(forget_fraction * n_people)))
    forget_idx = set(rng.sample(range(n_people), n_forget))

    forget: list[QARecord] = []
    retain: list[QARecord] = []
    for i, person in enumerate(people):
        target = forget if i in forget_idx else retain
        for attribute in attributes:
            target.append(_record(rng, person, attribute, pools[attribute], n_perturbed, seed, i))
    return FactSet(
        people=tuple(people),
        forget_people=tuple(p.name for i, p in enumerate(people) if i in forget_idx),
        forget=forget,
        retain=retain,
        seed=seed,
    )


def _record(
    rng: random.Random, person: Person, attribute: str, pool: Sequence[str], n_perturbed: int, seed: int, index: int
) -> QARecord:
    answer = person.facts[attribute]
    question, paraphrase = (q.format(name=person.name) for q in _QUESTIONS[attribute])
    wrong = [v for v in pool if v != answer]
    return QARecord(
        question=question,
        answer=answer,
        source=f"facts(seed={seed}):{person.name}:{attribute}",
        extra={
            "person": person.name,
            "person_index": index,
            "attribute": attribute,
            "paraphrased_question": paraphrase,
            "perturbed_answer": rng.sample(wrong, min(n_perturbed, len(wrong))),
        },
    )


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _person_name(rng: random.Random) -> str:
    first = "".join(_syllable(rng) for _ in range(2))
    last = "".join(_syllable(rng) for _ in range(2))
    return f"{first.capitalize()} {last.capitalize()}"


def _town_name(rng: random.Random) -> str:
    return (_syllable(rng) + rng.choice(_TOWN_ENDINGS)).capitalize()


def _unique(rng: random.Random, n: int, make: Callable[[random.Random], str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(n * 50):  # the spaces are large; this bound only guards against an exhausted pool
        value = make(rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
            if len(out) == n:
                return out
    raise ValueError(f"could not generate {n} distinct values; ask for fewer people")
