"""Look up objectives by name: ``get("uce", eps=0.3)``, ``available()``, and the ``@register`` decorator."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from mollm.objectives.base import Objective

_REGISTRY: dict[str, type[Objective]] = {}

T = TypeVar("T", bound=type[Objective])


def register(cls: T) -> T:
    """Class decorator: make ``cls`` available under ``cls.name``. A name already taken by another class is an error."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register expects an Objective subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a non-empty class attribute 'name' to be registered")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        owner = f"{existing.__module__}.{existing.__qualname__}"
        raise ValueError(f"objective name '{name}' is already registered by {owner}")
    _REGISTRY[name] = cls
    return cls


def available() -> list[str]:
    """Names of all registered objectives, sorted."""
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    """The class registered under ``name``; unknown names raise a ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective '{name}'; available: {', '.join(available())}") from None


def get(name: str, **options: Any) -> Objective:
    """Build the objective ``name`` with ``options``; a bad option raises a ``ValueError`` naming it."""
    cls = objective_class(name)
    try:
        return cls(**options)
    except ValidationError as err:
        raise ValueError(_readable(name, cls, err)) from None


def _readable(name: str, cls: type[Objective], err: ValidationError) -> str:
    known = ", ".join(cls.Options.model_fields) or "(none)"
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(options)"
        got = f" (got {e['input']!r})" if e["type"] != "missing" else ""
        lines.append(f"option '{field}': {e['msg']}{got}")
    return f"objective '{name}': " + "; ".join(lines) + f". Known options: {known}"
