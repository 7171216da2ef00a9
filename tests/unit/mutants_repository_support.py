"""Shared by the model repository and data plane tests pinned by mutants (test_mutants_repository_lookups,
_loading, _calls, _roots): onnxruntime backends held at a gate the test opens (`Gate` for a call, `SlowLoad`
for a load) or failing every call (`Failing`), their registry, which a test module uses by naming it
(`registry = support.registry`), and a data plane on the real tiny ONNX model with its config.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.models.signature import Tensors
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository
from hotswap.testing import TinyModels

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


class Gate(OnnxRuntimeBackend):
    """onnxruntime, but each call waits at a gate the test opens: a batch that is still running."""

    name = "gate"
    entered = threading.Event()
    opened = threading.Event()

    def run(self, inputs: Tensors) -> Tensors:
        Gate.entered.set()
        Gate.opened.wait(10)
        return super().run(inputs)


class SlowLoad(OnnxRuntimeBackend):
    """onnxruntime whose load waits at a gate the test opens: a model caught while it loads."""

    name = "slowload"
    entered = threading.Event()
    opened = threading.Event()

    def _load(self, artifact, options, declared):
        SlowLoad.entered.set()
        SlowLoad.opened.wait(10)
        return super()._load(artifact, options, declared)


class Failing(OnnxRuntimeBackend):
    """onnxruntime that loads but fails every call: a device gone bad under failover."""

    name = "failing"

    def run(self, inputs: Tensors) -> Tensors:
        raise RuntimeError("device lost")


@pytest.fixture(scope="module")
def registry() -> BackendRegistry:
    found = discover_backends()
    return BackendRegistry(available={**found.available, "gate": Gate, "slowload": SlowLoad, "failing": Failing},
                           failed=dict(found.failed),
                           distributions=dict(found.distributions))


def _config(tiny: TinyModels, registry: BackendRegistry, control: str = "explicit", server: dict | None = None,
            extra: list[dict] = (), **model):
    models = [{"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]} | model,
              {"name": "other", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]}, *extra]
    section = {"model_control": control, "model_roots": [str(Path(tiny.onnx).parent)]} | (server or {})
    return parse_config({"server": section, "models": models}, "test", registry)


@asynccontextmanager
async def _plane(tiny, registry, control: str = "explicit", load: bool = True, server: dict | None = None,
                 extra: list[dict] = (), **model) -> AsyncIterator[DataPlane]:
    config = _config(tiny, registry, control, server, extra, **model)
    metrics = Metrics()
    plane = DataPlane(ModelRepository(config, registry, metrics), metrics, control, config.server.limits)
    if load:
        await plane.repository.load_all()
    try:
        yield plane
    finally:
        await plane.close()


async def _araises(kind, message: str, call) -> None:
    with pytest.raises(kind) as info:
        await call()
    assert str(info.value) == message


def _samples(plane: DataPlane, name: str) -> dict[frozenset, float]:
    return {frozenset(s.labels.items()): s.value for family in plane.metrics.registry.collect()
            for s in family.samples if s.name == name and s.labels.get("model") == "tiny"}


GEN = {"name": "gen", "source": "builtin:smollm2", "backends": [{"name": "torch", "device": "cpu"}], "generation": {}}


def _roots_config(tiny, registry, roots: list | None, *models: dict):
    config = parse_config({"server": {"model_roots": [str(Path(tiny.onnx).parent)]}, "models": list(models)},
                          "test", registry)
    config.server.model_roots = roots
    return config
