"""Shared fixtures for generator tests.

``tests/`` goes on ``sys.path`` so tests import the tiny fixtures as ``from tiny_sd import ...``: the name
``tests`` itself is taken in this environment by a ``tests`` package that torch-fidelity installs into
site-packages, so ``from tests.tiny_sd import ...`` would resolve there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from tiny_sd import build_tiny_sd_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random-weight ``StableDiffusionPipeline`` folder (16 × 16 images), built once per session."""
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(autouse=True)
def _one_cpu_thread(one_torch_thread):
    """Every generator test on one torch thread (tests/conftest.py)."""
