"""Shared test fixtures: offline mode, the real data folder beside the repo, the embedded tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI draws the same hypothesis examples every run (a landing must not depend on luck); locally they stay random, so
# new counterexamples keep being found. `HYPOTHESIS_PROFILE=ci` reproduces CI's draw.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests run in two pytest-xdist workers on two cores: one thread each avoids oversubscription, which on a busy
# machine made small torch ops 50x slower (OpenMP threads spin-waiting for a core).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data sets (TOFU, TruthfulQA, PKU-SafeRLHF) that CI places beside the repository."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests expect ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer (vocabulary 49152), paired with ``tiny_model()`` in fast tests."""
    from mollm.models.loading import load_tokenizer

    return load_tokenizer()
