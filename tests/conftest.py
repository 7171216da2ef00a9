"""Shared fixtures: tiny models exported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotswap.testing import TinyModels, build_tiny_models

# Tests never reach a model hub: sentence-transformers/transformers load local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def minilm_source():
    """builtin:minilm prepared once and cached across runs ($HOTSWAP_TEST_HOME, else .pytest_cache)."""
    from hotswap.models.minilm import prepare

    home = os.environ.get("HOTSWAP_TEST_HOME") or Path(__file__).resolve().parents[1] / ".pytest_cache" / "hotswap_home"
    return prepare(Path(home))
