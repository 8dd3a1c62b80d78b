"""G-effect toolkit: how much an unlearning objective's gradient moves the forget and retain NLL, by layer, sample
and step (Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond", ICLR 2025).

Public API: :func:`compute_geffects` / :func:`geffect` (one model state), :func:`param_groups` (layer groups),
:func:`implicit_weights` (each objective's per-token / per-sample weights), :class:`GEffectCallback` (during a run),
:func:`geffect_over_checkpoints` (saved checkpoints), :func:`verify_first_order` (the first-order check) and
:func:`answer_nll` (the risk ``R``).
"""

from mollm.geffect.core import GEffect, GradEMA, SampleEffects, answer_nll, compute_geffects, geffect
from mollm.geffect.groups import ParamGroups, param_groups
from mollm.geffect.tracking import GEffectCallback, geffect_over_checkpoints, read_jsonl
from mollm.geffect.verify import FirstOrderCheck, verify_first_order
from mollm.geffect.weights import ImplicitWeights, implicit_weights, token_weights

__all__ = [
    "FirstOrderCheck",
    "GEffect",
    "GEffectCallback",
    "GradEMA",
    "ImplicitWeights",
    "ParamGroups",
    "SampleEffects",
    "answer_nll",
    "compute_geffects",
    "geffect",
    "geffect_over_checkpoints",
    "implicit_weights",
    "param_groups",
    "read_jsonl",
    "token_weights",
    "verify_first_order",
]
