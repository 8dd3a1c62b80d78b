"""TorchJD's weightings as mollm aggregators (optional: ``pip install mollm[torchjd]``).

A TorchJD ``Weighting`` over the Gramian (``UPGradWeighting``, ``MGDAWeighting``, ``CAGradWeighting``,
``DualProjWeighting``, ``AlignedMTLWeighting``, ``IMTLGWeighting``, ...) maps G = JJᵀ to weights, which is exactly
what a mollm aggregator does, so each one works unchanged::

    aggregator: {name: "torchjd:UPGradWeighting", options: {pref_vector: [0.5, 0.25, 0.25]}}   # in a run config

    agg = mollm.aggregators.get("torchjd:CAGradWeighting", c=0.4)       # options go to the TorchJD constructor
    agg = mollm.aggregators.from_torchjd(UPGradWeighting(projector=QuadprogProjector(reg_eps=1e-8)))

The weighting receives the checked, symmetrised float64 CPU Gramian and its weights come back with the input's dtype
and device; non-finite weights are an error (the base class). Options are validated against the constructor's
signature when a config is checked (a list is accepted where TorchJD takes a tensor, e.g. ``pref_vector``), and the
weighting is built once then, so a bad value or a missing optional dependency (cvxpy for CAGrad) is reported before
a run starts. Stateful weightings keep their state across calls (:meth:`TorchJD.reset` clears it); the random ones
(``PCGradWeighting``, ``RandomWeighting``) draw from torch's global generator.

Weightings that read the Jacobian itself (``ExcessMTLWeighting``, ``MoDoWeighting``, ``SDMGradWeighting``; TorchJD's
``NashMTL`` is only an aggregator on the Jacobian) cannot be served: mollm never forms J. Of TorchJD's matrix
weightings only those that read nothing but the number of rows (``MeanWeighting``, ``SumWeighting``,
``ConstantWeighting``, ``RandomWeighting``) are accepted. Nothing of TorchJD is imported until it is asked for.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import types
import typing
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import PydanticUserError, create_model, model_validator
from pydantic_core import PydanticCustomError

from mollm.aggregators.base import AGGREGATORS, Aggregator, AggregatorOptions
from mollm.core.registry import Entry

PREFIX = "torchjd"
INSTALL_HINT = "pip install mollm[torchjd]"
# Matrix weightings that read only the matrix's number of rows, so the Gramian serves as well as the Jacobian.
_SHAPE_ONLY = frozenset({"MeanWeighting", "SumWeighting", "ConstantWeighting", "RandomWeighting"})


class TorchJDMissingError(ImportError, ValueError):
    """TorchJD is not installed (a ``ValueError`` too, so a config check lists it as a problem)."""


def _version() -> str:
    try:
        return importlib.metadata.version("torchjd")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _aggregation(name: str = PREFIX) -> Any:
    try:
        from torchjd import aggregation
    except ImportError as err:
        raise TorchJDMissingError(
            f"aggregator {name!r} needs TorchJD, which is not installed ({err}); install it with: {INSTALL_HINT}"
        ) from None
    return aggregation


class TorchJD(Aggregator):
    """A TorchJD weighting (Gramian → weights) used as a mollm aggregator (see the module docstring)."""

    name: ClassVar[str] = PREFIX
    # Set on the classes made for ``torchjd:NAME`` (:func:`entry`); None for :func:`from_torchjd`.
    weighting_class: ClassVar[type | None] = None

    def __init__(self, weighting: Any = None, /, **options: Any) -> None:
        super().__init__(**options)
        if weighting is None:
            if self.weighting_class is None:
                raise TypeError("TorchJD(): give a torchjd Weighting, or use get('torchjd:NAME', **options)")
            try:
                weighting = _build(self.weighting_class, self.options.model_dump())
            except ValueError as err:
                raise ValueError(f"aggregator '{self.name}': {err}") from None
        elif self.weighting_class is not None or options:
            raise TypeError(f"aggregator '{self.name}': give either a weighting or its options, not both")
        else:
            _check_weighting(weighting)
            self.name = f"{PREFIX}:{type(weighting).__name__}"
        self.weighting = weighting

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        m = gram.shape[0]
        with torch.no_grad():
            try:
                w = self.weighting(torch.from_numpy(gram))
            except (ValueError, RuntimeError) as err:
                raise ValueError(f"aggregator '{self.name}' on a {m}×{m} Gramian: {err}") from err
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"aggregator '{self.name}': the weighting returned {type(w).__name__}, not a tensor")
        w = w.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if w.shape != (m,):
            raise ValueError(f"aggregator '{self.name}': the weighting returned {w.numel()} weights for {m} objectives")
        return w.numpy().copy()

    def reset(self) -> None:
        """Reset a stateful weighting (GradVac, PCD, CR-MOGM, ...); nothing for a stateless one."""
        reset = getattr(self.weighting, "reset", None)
        if callable(reset):
            reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({' '.join(repr(self.weighting).split())})"


def from_torchjd(weighting: Any) -> TorchJD:
    """Wrap a TorchJD ``Weighting`` instance as a mollm aggregator (a ``TypeError`` for one that needs J)."""
    return TorchJD(weighting)


# ------------------------------------------------------------------------------------------ what a weighting reads
def _reads(weighting_type: type, instance: Any = None) -> str:
    """What a weighting reads, from the ``Weighting[PSDMatrix]`` or ``Weighting[Matrix]`` it subclasses: "gramian",
    "matrix", "shape" (a matrix weighting that reads only the number of rows) or "unknown"."""
    from torchjd.linalg import Matrix, PSDMatrix

    aggregation = _aggregation()
    if weighting_type.__name__ in _SHAPE_ONLY and getattr(aggregation, weighting_type.__name__, None) is weighting_type:
        return "shape"
    for cls in weighting_type.__mro__:
        for base in cls.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is not aggregation.Weighting:
                continue
            (arg,) = typing.get_args(base) or (None,)
            if isinstance(arg, type) and issubclass(arg, PSDMatrix):
                return "gramian"
            if isinstance(arg, type) and issubclass(arg, Matrix):
                return "matrix"
    # A wrapper generic in its input (CR-MOGM's moving average) reads what the weighting it wraps reads.
    inner = getattr(instance, "weighting", None)
    if isinstance(inner, aggregation.Weighting):
        return _reads(type(inner), inner)
    return "unknown"


def _why_not(name: str, kind: str) -> str | None:
    if kind in ("gramian", "shape"):
        return None
    if kind == "matrix":
        return (
            f"TorchJD's {name} reads the Jacobian matrix itself, but mollm aggregators see only the Gramian "
            "G = JJᵀ (mollm never forms J); use a Gramian weighting"
        )
    return (
        f"cannot tell whether TorchJD's {name} takes a Gramian: a weighting must subclass "
        "Weighting[PSDMatrix] (or wrap one)"
    )


def _check_weighting(weighting: Any) -> None:
    aggregation = _aggregation()
    if not isinstance(weighting, aggregation.Weighting):
        hint = ""
        if isinstance(weighting, aggregation.Aggregator):
            hint = (
                " (that is a TorchJD Aggregator, which takes the Jacobian; pass its Weighting, e.g. UPGradWeighting())"
            )
        raise TypeError(f"from_torchjd: expected a torchjd.aggregation.Weighting, got {type(weighting).__name__}{hint}")
    problem = _why_not(type(weighting).__name__, _reads(type(weighting), weighting))
    if problem:
        raise TypeError(f"from_torchjd: {problem}")


# ------------------------------------------------------------------------------------------- torchjd:NAME entries
def _build(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` (lists become float64 tensors); a ``ValueError`` saying what TorchJD refused."""
    kwargs = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k, v in values.items()}
    try:
        weighting = cls(**kwargs)
    except ImportError as err:  # TorchJD's optional solvers (cvxpy, quadprog, ...)
        raise ValueError(f"{err} ({INSTALL_HINT} installs them)") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"TorchJD's {cls.__name__} refused these options: {err}") from None
    problem = _why_not(cls.__name__, _reads(cls, weighting))
    if problem:
        raise ValueError(problem)
    return weighting


def _field(annotation: Any, default: Any) -> tuple[Any, Any]:
    """A pydantic field for one constructor parameter; a tensor parameter also takes a list of numbers."""
    if (
        isinstance(annotation, str)
        or annotation is inspect.Parameter.empty
        or typing.get_origin(annotation) not in (None, typing.Union, types.UnionType, typing.Literal)
    ):  # none, unresolved, or generic (CR-MOGM's Weighting[_T]): the constructor checks the value
        return (Any, default)
    try:
        if "Tensor" in str(annotation):
            annotation = annotation | list[float]
        create_model("_Probe", __base__=AggregatorOptions, x=(annotation, default))
    except (TypeError, PydanticUserError):  # a type pydantic cannot check: the constructor does
        annotation = Any
    return (annotation, default)


def _options_class(cls: type) -> type[AggregatorOptions]:
    try:
        hints = inspect.get_annotations(cls.__init__, eval_str=True)
    except (NameError, SyntaxError, TypeError, AttributeError):  # an annotation that does not resolve at run time
        hints = {}
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = _field(hints.get(p.name, p.annotation), default)

    def built(self: AggregatorOptions) -> AggregatorOptions:
        try:  # every constructor check (and optional dependency) when a config is checked, before a run
            _build(cls, self.model_dump())
        except ValueError as err:
            raise PydanticCustomError("torchjd", "{problem}", {"problem": str(err)}) from None
        return self

    validators = {"_constructs": model_validator(mode="after")(built)}
    return create_model(f"{cls.__name__}Options", __base__=AggregatorOptions, __validators__=validators, **fields)


def entry(weighting_name: str) -> Entry[type[Aggregator]]:
    """The registry entry of ``torchjd:<weighting_name>``: a :class:`TorchJD` subclass building that weighting."""
    name = f"{PREFIX}:{weighting_name}"
    aggregation = _aggregation(name)
    cls = getattr(aggregation, weighting_name, None) if weighting_name in aggregation.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, aggregation.Weighting) and cls is not aggregation.Weighting):
        known = sorted(n for n in aggregation.__all__ if n.endswith("Weighting") and n != "Weighting")
        hint = f"; did you mean '{PREFIX}:{weighting_name}Weighting'?" if f"{weighting_name}Weighting" in known else ""
        raise ValueError(
            f"unknown aggregator {name!r}: TorchJD {_version()} has no "
            f"weighting {weighting_name!r}{hint} (its weightings: {', '.join(known)})"
        )
    kind = _reads(cls)
    if kind == "matrix":  # "unknown" (a generic wrapper) is decided on the instance, when the options are checked
        raise ValueError(f"aggregator {name!r}: {_why_not(weighting_name, kind)}")
    options = _options_class(cls)
    target = type(
        f"TorchJD_{weighting_name}",
        (TorchJD,),
        {"name": name, "weighting_class": cls, "Options": options, "__module__": __name__},
    )
    return Entry(name, target, options, f"TorchJD's {weighting_name} (torchjd.aggregation), Gramian to weights")


AGGREGATORS.add_prefix(PREFIX, entry)
