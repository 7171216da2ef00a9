"""Shared by the chain-selection tests (test_selection_chains, _torch_instances, _cann): the registry of the
two built-in backends, the CPU onnxruntime entry, a model config over a chain (`model`), the tiny network's
declared signature (`declared`) and a check that a loaded backend answers as the reference does."""

from __future__ import annotations

import numpy as np

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import ModelConfig
from hotswap.testing import TINY_SIGNATURE

REGISTRY = BackendRegistry(available={"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend})
ORT_CPU = {"name": "onnxruntime", "providers": ["CPUExecutionProvider"]}


def model(source, *backends, **extra) -> ModelConfig:
    return ModelConfig(name="tiny", source=str(source), backends=list(backends), **extra)


def declared() -> dict:
    return {"inputs": [s.model_dump() for s in TINY_SIGNATURE.inputs],
            "outputs": [s.model_dump() for s in TINY_SIGNATURE.outputs]}


def check_serves(backend, tiny) -> None:
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    out = backend.infer({"x": x})
    ref = tiny.reference({"x": x})
    np.testing.assert_allclose(out["y"], ref["y"], atol=1e-4)
    np.testing.assert_allclose(out["z"], ref["z"], atol=1e-4)
