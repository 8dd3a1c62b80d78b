"""One small registry for every named, configurable piece: objectives, aggregators, metrics, data kinds and judges.

An entry is a name, the thing it names (a class or a function) and a typed pydantic options class, so a whole run
configuration can be checked before anything is built (:meth:`Registry.check` returns every problem instead of
stopping at the first) and ``mollm list`` can print every name with its options::

    OBJECTIVES = Registry("objective")
    OBJECTIVES.add("uce", UCE, UCE.Options, "Unlearning cross-entropy ...")
    OBJECTIVES.check("uce", {"epz": 0.5})    # ["objective 'uce': option 'epz': unknown option (its options: eps)"]
    OBJECTIVES.options("uce", {"eps": 0.5})  # UCE.Options(eps=0.5), or ValueError listing every problem
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

T = TypeVar("T")


class Options(BaseModel):
    """Base of every options class: unknown keys are errors (a typo must not pass silently); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: what it names, its options class and a one-line description."""

    name: str
    target: T
    options: type[Options]
    description: str


class Registry(Generic[T]):
    """Names of one kind (``"objective"``, ``"metric"``, ...) mapped to entries; a name is taken at most once."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._prefixes: dict[str, Callable[[str], Entry[T]]] = {}

    def add(self, name: str, target: T, options: type[Options] = Options, description: str | None = None) -> T:
        """Register ``target`` under ``name``; the description defaults to the first paragraph of its docstring."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise TypeError(f"{self.kind} '{name}': options must be a pydantic model class, got {options!r}")
        existing = self._entries.get(name)
        if existing is not None and _qualname(existing.target) != _qualname(target):
            raise ValueError(f"{self.kind} name '{name}' is already registered by {_qualname(existing.target)}")
        text = description if description is not None else first_paragraph(getattr(target, "__doc__", None))
        self._entries[name] = Entry(name, target, options, text)
        return target

    def add_prefix(self, prefix: str, resolve: Callable[[str], Entry[T]]) -> None:
        """Names ``prefix:rest`` are looked up on demand by ``resolve(rest)`` (a ``ValueError`` for an unknown
        ``rest``); they are not listed by :meth:`names` (``torchjd:UPGradWeighting``, resolved by the plug-in)."""
        self._prefixes[prefix] = resolve

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``; an unknown name is a ``ValueError`` listing the known ones."""
        prefix, colon, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
        if colon and prefix in self._prefixes and name not in self._entries:
            return self._prefixes[prefix](rest)
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(self.names() + [f"{p}:NAME" for p in sorted(self._prefixes)]) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def check(self, name: str, options: Mapping[str, Any] | None = None) -> list[str]:
        """Every problem with ``name`` and ``options`` (an empty list when both are valid); nothing is built."""
        try:
            self.options(name, options)
        except ValueError as err:
            return [str(err)]
        return []

    def options(self, name: str, options: Mapping[str, Any] | None = None) -> Options:
        """``options`` validated by ``name``'s options class; a ``ValueError`` lists every bad option."""
        return build_options(self.kind, name, self.entry(name).options, options)


def build_options(kind: str, name: str, options_class: type[Options], options: Mapping[str, Any] | None) -> Options:
    """``options_class(**options)``, with a ``ValueError`` naming the entry and every bad option on failure."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"{kind} '{name}': options must be a mapping of names to values, got {options!r}")
    try:
        return options_class(**dict(options or {}))
    except ValidationError as err:
        raise ValueError(f"{kind} '{name}': {validation_problems(err, options_class)}") from None


def validation_problems(err: ValidationError, options: type[BaseModel]) -> str:
    """A pydantic error as one line per bad option, naming the known options when a key is unknown."""
    known = ", ".join(options.model_fields) or "none"
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(options)"
        if e["type"] == "extra_forbidden":
            lines.append(f"option '{field}': unknown option (its options: {known})")
        elif e["type"] == "missing":
            lines.append(f"option '{field}': required")
        else:
            lines.append(f"option '{field}': {e['msg']} (got {e['input']!r})")
    return "; ".join(lines)


def options_from_signature(fn: Callable[..., Any], skip: int, name: str) -> type[Options]:
    """An options class built from ``fn``'s keyword parameters after the first ``skip`` (their annotations and
    defaults), so a function-style entry (a metric) is validated like a class-style one."""
    hints = inspect.get_annotations(fn, eval_str=True)
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(fn).parameters.values())[skip:]:
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(f"{name}Options", __base__=Options, **fields)


def describe_options(options: type[BaseModel]) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` of each option, for ``mollm list``."""
    rows = []
    for key, info in options.model_fields.items():
        kind = _type_name(info.annotation)
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        rows.append((key, kind, default))
    return rows


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _qualname(target: Any) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
