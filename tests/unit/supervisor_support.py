"""Shared by the failover supervisor's in-process tests (test_supervisor_return, _standby, _counting):
the tiny network on onnxruntime backends a test can break and mend (`Mendable`), that never load
(`Unloadable`) or load only once a device is up (`Late`), their registry and a supervisor over them.
A test module uses the fixtures by naming them: `registry = supervisor_support.registry`."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.errors import BackendError, BackendUnavailable
from hotswap.models.signature import Tensors
from hotswap.serve.metrics import Metrics
from hotswap.serve.supervisor import ModelSupervisor

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


class Mendable(OnnxRuntimeBackend):
    """onnxruntime whose calls fail while `broken`, whose loads fail while `unloadable`, whose
    answers are off by `skew` (a preferred entry that loads but disagrees), and whose close waits
    for `close_gate` when a test sets one."""

    name = "mendable"
    broken = threading.Event()
    unloadable = threading.Event()
    gate: threading.Semaphore | None = None  # when set by a test: each call takes one permit
    entered = threading.Event()
    skew = 0.0
    calls = 0
    loads = 0

    load_gate: threading.Event | None = None  # when set by a test: each load waits for it
    close_gate: threading.Event | None = None  # when set by a test: closing waits for it
    closed = 0

    def _load(self, artifact, options, declared):
        Mendable.loads += 1
        if Mendable.unloadable.is_set():
            raise BackendUnavailable("the device is still gone")
        if Mendable.load_gate is not None:
            Mendable.load_gate.wait(10)
        return super()._load(artifact, options, declared)

    def run(self, inputs: Tensors) -> Tensors:
        Mendable.calls += 1
        Mendable.entered.set()
        if Mendable.gate is not None:
            Mendable.gate.acquire(timeout=10)
        if Mendable.broken.is_set():
            raise BackendError("device lost")
        return {k: v + np.float32(Mendable.skew) for k, v in super().run(inputs).items()}

    def close(self) -> None:
        if Mendable.close_gate is not None:
            Mendable.close_gate.wait(10)
        Mendable.closed += 1
        super().close()


class Unloadable(OnnxRuntimeBackend):
    name = "unloadable"
    attempts = 0

    def _load(self, artifact, options, declared):
        Unloadable.attempts += 1
        raise BackendUnavailable("no such device")


class Late(OnnxRuntimeBackend):
    """onnxruntime that cannot load until `loadable` is set (a device that comes up after start-up)."""

    name = "late"
    loadable = threading.Event()
    close_gate: threading.Event | None = None  # when set by a test: closing waits for it
    closed = 0

    def _load(self, artifact, options, declared):
        if not Late.loadable.is_set():
            raise BackendUnavailable("not up yet")
        return super()._load(artifact, options, declared)

    def close(self) -> None:
        if Late.close_gate is not None:
            Late.close_gate.wait(10)
        Late.closed += 1
        super().close()


@pytest.fixture(autouse=True)
def mended():
    Mendable.broken.clear()
    Mendable.unloadable.clear()
    Mendable.skew, Mendable.calls, Mendable.loads, Mendable.gate, Mendable.load_gate = 0.0, 0, 0, None, None
    Mendable.close_gate, Mendable.closed = None, 0
    Mendable.entered.clear()
    Unloadable.attempts = 0
    Late.loadable.clear()
    Late.close_gate, Late.closed = None, 0
    yield
    Mendable.broken.clear()
    Mendable.unloadable.clear()


def with_backends(*extra: type[OnnxRuntimeBackend]) -> BackendRegistry:
    """The installed backends and `extra` (test backends, each under its `name`)."""
    found = discover_backends()
    return BackendRegistry(available={**found.available, **{cls.name: cls for cls in extra}},
                           failed=dict(found.failed), distributions=dict(found.distributions))


@pytest.fixture(scope="module")
def registry() -> BackendRegistry:
    return with_backends(Mendable, Unloadable, Late)


def supervisor(tiny, registry, backends: list[str], batching: dict | None = None, metrics: Metrics | None = None,
               with_failover: bool = True, drain_timeout_s: float = 5, **failover) -> ModelSupervisor:
    """A supervisor of the tiny network over `backends`, with a `failover:` section of `after_errors: 1`
    and `failover`'s keys, or (`with_failover=False`) none."""
    model = {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": b} for b in backends],
             "batching": batching or {}}
    if with_failover:
        model["failover"] = {"after_errors": 1, **failover}
    config = parse_config({"server": {"model_roots": [str(tiny.onnx.parent)]}, "models": [model]}, "test", registry)
    return ModelSupervisor(config.models[0], registry, metrics or Metrics(), drain_timeout_s=drain_timeout_s)


async def until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
