"""serve/recovery.py in-process: the switch log read whole (state, metadata, metrics) and the parity probe
between two real onnxruntime runners of the tiny network (same weights, other weights, no batches)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.config import FailoverConfig, ModelConfig
from hotswap.serve.metrics import Metrics
from hotswap.serve.recovery import HISTORY, SwitchLog, probe_parity
from hotswap.serve.runner import ModelRunner
from hotswap.serve.shadow import parity
from hotswap.testing import TinyModels, build_tiny_models

REGISTRY = BackendRegistry(available={"onnxruntime": OnnxRuntimeBackend})


def value(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_switch_is_counted_timed_and_logged_whole():
    metrics = Metrics()
    before = time.time()
    switches = SwitchLog("m", metrics)
    assert (switches.state, switches.reason, switches.last_probe) == ("serving", "loaded", None)
    assert before <= switches.summary()["since"] <= time.time(), "serving since it loaded"
    switches.switched("a#0", "b#1", "backend_error", 0.25, faulty=True, preferred=False)
    assert (switches.state, switches.reason) == ("failed_over", "backend_error")
    assert switches.summary() == {"state": "failed_over", "since": switches.since, "reason": "backend_error",
                                  "history": [{"at": switches.since, "from": "a#0", "to": "b#1",
                                               "reason": "backend_error", "switch_ms": 250.0}],
                                  "last_probe": None}
    labels = {"model": "m", "from": "a#0", "to": "b#1", "reason": "backend_error"}
    assert value(metrics, "hotswap_failover_total", labels) == 1
    assert value(metrics, "hotswap_failover_switch_seconds_sum", {"model": "m"}) == 0.25
    switches.switched("b#1", "a#0", "recovered", 0.0123456, faulty=False, preferred=True)
    assert (switches.state, switches.history[-1]["switch_ms"]) == ("serving", 12.346)
    assert value(metrics, "hotswap_failover_switch_seconds_count", {"model": "m"}) == 1, "a return is not timed"
    for i in range(HISTORY + 2):
        switches.switched(f"x{i}", f"y{i}", "backend_hung", 0.001, faulty=True, preferred=False)
    assert len(switches.history) == HISTORY and switches.history[0]["from"] == "x2", "the oldest are dropped"


def test_a_failed_probe_and_a_degraded_backend_are_recorded():
    switches = SwitchLog("m", Metrics())
    switches.probe_failed("a#0", None)
    assert switches.last_probe == {"at": switches.last_probe["at"], "backend": "a#0", "result": "superseded"}
    switches.probe_failed("a#0", "parity: ...")
    assert switches.summary()["last_probe"]["result"] == "parity: ..."
    switches.degraded("b#1", "3 failed batches")
    assert (switches.state, switches.reason) == ("degraded", "3 failed batches; no later chain entry loads")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("other"), seed=1)


def test_the_parity_probe_passes_equal_runners_and_names_what_differs(tiny: TinyModels, other: TinyModels):
    policy = FailoverConfig(parity_atol=1e-4, parity_min_cosine=0.999)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)

    async def scenario():
        runners = [ModelRunner(ModelConfig(name="tiny", source=str(models.onnx), backends=[{"name": "onnxruntime"}]),
                               REGISTRY, Metrics()) for models in (tiny, tiny, other)]
        for runner in runners:
            await runner.start()
        try:
            same = await probe_parity(runners[0], runners[1], [{"x": x}], policy)
            differs = await probe_parity(runners[2], runners[0], [{"x": x}], policy)
            nothing = await probe_parity(runners[2], runners[0], [], policy)
            expected = parity(await runners[0].infer({"x": x}, None), await runners[2].infer({"x": x}, None))
        finally:
            for runner in runners:
                await runner.close()
        return same, differs, nothing, expected

    same, differs, nothing, (max_abs, cosine) = asyncio.run(scenario())
    assert same is None and nothing is None
    assert differs == (f"parity: max abs error {max_abs} (parity_atol 0.0001), min cosine {float(cosine.min()):.6f} "
                       "(parity_min_cosine 0.999)")
