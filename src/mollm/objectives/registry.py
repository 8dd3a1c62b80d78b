"""Look up objectives by name: ``get("uce", eps=0.3)``, ``available()``, and the ``@register`` decorator.

The entries live in :data:`OBJECTIVES`, a :class:`mollm.core.registry.Registry` whose options classes are the
objectives' own ``Options``, so a run's objectives are validated before any model is loaded.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mollm.core.registry import Registry
from mollm.objectives.base import Objective

OBJECTIVES: Registry[type[Objective]] = Registry("objective")

T = TypeVar("T", bound=type[Objective])


def register(cls: T) -> T:
    """Class decorator: make ``cls`` available under ``cls.name``. A name already taken by another class is an error."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register expects an Objective subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a non-empty class attribute 'name' to be registered")
    return OBJECTIVES.add(name, cls, cls.Options)


def available() -> list[str]:
    """Names of all registered objectives, sorted."""
    return OBJECTIVES.names()


def objective_class(name: str) -> type[Objective]:
    """The class registered under ``name``; unknown names raise a ``ValueError`` listing the known ones."""
    return OBJECTIVES.entry(name).target


def get(name: str, **options: Any) -> Objective:
    """Build the objective ``name`` with ``options``; a bad option raises a ``ValueError`` naming it."""
    return objective_class(name)(**options)
