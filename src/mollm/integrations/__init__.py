"""Bridges from other training frameworks to mollm's multi-objective step.

* :mod:`mollm.integrations.transformers` — :class:`~mollm.integrations.transformers.MultiObjectiveTrainer`, a
  ``transformers.Trainer`` whose training step is mollm's (per-objective gradients, their Gramian, an aggregator's
  coefficients), for pipelines built around the Hugging Face ``Trainer`` (e.g. open-unlearning's).

The integrations sit above the engine (they use its step and samplers) and nothing below imports them; each one
imports its framework only when it is imported itself.
"""
