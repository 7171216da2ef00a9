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
    """The tiny network in every format. With $HOTSWAP_TEST_TINY_CACHE set (`make mutate`, which starts
    thousands of short sessions) it is exported there once and copied into each session's temp folder."""
    cache = os.environ.get("HOTSWAP_TEST_TINY_CACHE")
    if not cache:
        return build_tiny_models(tmp_path_factory.mktemp("tiny"))
    return _cached_tiny_models(Path(cache), tmp_path_factory.mktemp("tiny"))


def _cached_tiny_models(cache: Path, directory: Path) -> TinyModels:
    import shutil

    import numpy as np
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".lock")):
        if not (cache / "reference.npz").exists():
            built = build_tiny_models(cache)
            np.savez(cache / "reference.npz", weight=built.weight, bias=built.bias)
    for name in ("tiny.onnx", "tiny.pt", "tiny.pt2"):
        shutil.copyfile(cache / name, directory / name)
    reference = np.load(cache / "reference.npz")
    return TinyModels(directory / "tiny.onnx", directory / "tiny.pt", directory / "tiny.pt2",
                      reference["weight"], reference["bias"])


@pytest.fixture(scope="session")
def minilm_source():
    """builtin:minilm prepared once and cached across runs ($HOTSWAP_TEST_HOME, else .pytest_cache)."""
    from hotswap.models.minilm import prepare

    home = os.environ.get("HOTSWAP_TEST_HOME") or Path(__file__).resolve().parents[1] / ".pytest_cache" / "hotswap_home"
    return prepare(Path(home))
