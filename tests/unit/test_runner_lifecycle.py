"""ModelRunner's start, stage times and close, in process on real backends: the load time it reports,
the device label of its metrics, chain positions when it walks only the tail of a chain (a failover
runner), the input stage of a model that tokenises, and a close that returns only once every
instance's backend is closed."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import ModelConfig, parse_config
from hotswap.serve.metrics import Metrics
from hotswap.serve.runner import ModelRunner
from tests.unit import supervisor_support as support
from tests.unit.supervisor_support import Late, X

registry = support.registry  # onnxruntime backends a test can make unloadable or slow to close
mended = support.mended


def chain(tiny, registry, backends: list[str], **extra) -> ModelConfig:
    model = {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": b} for b in backends], **extra}
    return parse_config({"server": {"model_roots": [str(tiny.onnx.parent)]}, "models": [model]}, "test",
                        registry).models[0]


def labels(device: str = "cpu", backend: str = "onnxruntime") -> dict[str, str]:
    return {"model": "tiny", "version": "1", "backend": backend, "device": device}


def test_the_load_time_is_measured_and_published_under_the_device_label(tiny, registry):
    metrics = Metrics()
    runner = ModelRunner(chain(tiny, registry, ["onnxruntime"]), registry, metrics)

    async def go():
        await runner.start()
        await runner.close()

    asyncio.run(go())
    assert runner.info["device"] == "cpu"
    published = metrics.registry.get_sample_value("hotswap_model_load_seconds", labels())
    assert 0 < runner.load_seconds < 30 and published == runner.load_seconds


class Deviceless(OnnxRuntimeBackend):
    """A plugin whose describe() names no device."""

    name = "deviceless"

    def describe(self) -> dict[str, str]:
        return {"runtime": "onnxruntime"}


def test_a_backend_that_names_no_device_is_labelled_unknown(tiny):
    registry = BackendRegistry(available={"deviceless": Deviceless})
    metrics = Metrics()
    runner = ModelRunner(chain(tiny, registry, ["deviceless"]), registry, metrics)

    async def go():
        await runner.start()
        await runner.close()

    asyncio.run(go())
    published = metrics.registry.get_sample_value("hotswap_model_load_seconds", labels("unknown", "deviceless"))
    assert published == runner.load_seconds


def test_a_runner_over_the_tail_of_a_chain_reports_positions_in_the_whole_chain(tiny, registry):
    config = chain(tiny, registry, ["onnxruntime", "unloadable", "onnxruntime"])
    runner = ModelRunner(config, registry, Metrics(), first_position=1)

    async def go():
        await runner.start()
        try:
            return runner.metadata()["backend"]["chain_position"]
        finally:
            await runner.close()

    assert asyncio.run(go()) == 2
    assert runner.selected.position == 2
    assert [(s.position, s.label) for s in runner.selection.skipped] == [(1, "unloadable")]


def test_close_returns_once_every_instance_has_closed_its_backend(tiny, registry):
    Late.loadable.set()
    Late.close_gate = threading.Event()
    runner = ModelRunner(chain(tiny, registry, ["late"], instances=2), registry, Metrics())

    async def go():
        await runner.start()
        await runner.infer({"x": X}, 10.0)
        threading.Timer(0.3, Late.close_gate.set).start()  # each backend's close takes 0.3 s
        await runner.close()
        return Late.closed

    assert asyncio.run(go()) == 2


def test_tokenising_counts_in_the_input_stage(minilm_source, monkeypatch):
    monkeypatch.setenv("HOTSWAP_HOME", str(minilm_source.base_dir.parents[1]))
    metrics = Metrics()
    config = ModelConfig(name="minilm", source="builtin:minilm", backends=[{"name": "onnxruntime"}])
    runner = ModelRunner(config, discover_backends(), metrics)
    texts = np.array([" ".join(["a longer sentence, so the tokenizer has some work to do"] * 20)] * 32, dtype=object)

    async def go():
        await runner.start()
        await runner.infer({"text": texts}, 30.0)
        await runner.close()

    asyncio.run(go())
    series = {"model": "minilm", "version": "1", "backend": "onnxruntime", "device": "cpu"}
    took = metrics.registry.get_sample_value("hotswap_compute_input_duration_seconds_sum", series)
    assert 0 < took < 5, "the batch's concatenation and its tokenisation, never less than either"
