"""The guard that lets CUDA-absent tests skip, not fail, on a machine with onnxruntime CUDA.

No GPU exists here, so the CUDA case is simulated by making onnxruntime list the provider:
the guard asks the backend's real probe, which reads `onnxruntime.get_available_providers`.
"""

from __future__ import annotations

import onnxruntime
import pytest

from hotswap.testing import ort_provider_present, skip_if_ort_provider

CUDA = "CUDAExecutionProvider"


def test_guard_runs_the_test_where_cuda_is_absent(monkeypatch):
    """Without CUDA in onnxruntime's list the guard lets the test run."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert ort_provider_present(CUDA) is None
    skip_if_ort_provider(CUDA)  # does not skip


def test_guard_skips_where_cuda_is_present(monkeypatch):
    """With CUDA listed, the probe accepts it and the guard skips, saying why."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    with pytest.raises(pytest.skip.Exception, match=f"onnxruntime has {CUDA} here"):
        skip_if_ort_provider(CUDA)
