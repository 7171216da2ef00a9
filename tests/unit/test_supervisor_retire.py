"""What a failover leaves behind (serve/supervisor.py `_promote`, `_after_switch`), in process on real
onnxruntime sessions: the switch time observed, no return probe without `retry_primary_after_s`, and
the faulty runner's retirement, which a close at that moment waits for rather than cancels."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.errors import BackendError, ModelNotReady
from hotswap.serve.metrics import Metrics
from tests.unit import supervisor_support as support
from tests.unit.supervisor_support import Mendable, X, supervisor, until, with_backends

registry = support.registry  # the backends' registry, and every test's mended backends
mended = support.mended


async def fail_over(sup, to: str = "onnxruntime") -> None:
    """Start `sup` (if not started) on a mendable first entry, break it, and wait until the next entry (`to`) serves."""
    if sup.active is None:
        await sup.start()
    Mendable.broken.set()
    try:
        await sup.infer({"x": X}, 10.0)
    except BackendError:
        pass  # a model without `retry` fails the request that found the backend broken
    await until(lambda: sup.active.selected.label == to and sup._switching is None, "the failover")


def test_a_failover_observes_its_switch_time_and_starts_no_probe_without_retry_primary_after_s(tiny, registry):
    metrics = Metrics()
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], metrics=metrics)

    async def go():
        await fail_over(sup)
        probing = sup._probing
        await sup.close(1)
        return probing

    assert asyncio.run(go()) is None, "no return probe is started when none is configured"
    observed = metrics.registry.get_sample_value("hotswap_failover_switch_seconds_count", {"model": "tiny"})
    took = metrics.registry.get_sample_value("hotswap_failover_switch_seconds_sum", {"model": "tiny"})
    assert observed == 1 and 0 < took < 10


def test_a_close_just_after_a_failover_waits_for_the_faulty_runner_to_close(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"])
    Mendable.close_gate = threading.Event()

    async def go():
        await fail_over(sup)  # the faulty runner's close (its retirement) now waits for the gate
        threading.Timer(0.3, Mendable.close_gate.set).start()
        await sup.close(1)
        return Mendable.closed

    assert asyncio.run(go()) == 1, "close() returned before the retired backend was closed"


class Holding(OnnxRuntimeBackend):
    """onnxruntime whose calls wait for `release`, always on the instance's thread (not inline_safe)."""

    name = "holding"
    inline_safe = False
    entered = threading.Event()
    release = threading.Event()

    def run(self, inputs):
        Holding.entered.set()
        Holding.release.wait(10)
        return super().run(inputs)


@pytest.fixture()
def holding_registry():
    Holding.entered.clear()
    Holding.release.clear()
    yield with_backends(Mendable, Holding)
    Holding.release.set()


def test_the_entry_left_for_the_recovered_one_drains_within_drain_timeout_s(tiny, holding_registry):
    # One instance, batches of one: request `running` holds the left entry's only instance and
    # `queued` waits behind it when the preferred entry comes back. The retirement's drain bound
    # (drain_timeout_s) answers `queued` 503 long before `running` is let go.
    sup = supervisor(tiny, holding_registry, ["mendable", "holding"], batching={"max_batch_size": 1},
                     retry=False, retry_primary_after_s=0.05, drain_timeout_s=0.3)

    async def go():
        await sup.start()
        Mendable.unloadable.set()  # the return probe fails until both requests are in place
        await fail_over(sup, to="holding")
        assert sup.active.selected.label == "holding" and not sup._recent  # nothing to compare on return
        running = asyncio.create_task(sup.infer({"x": X}, 10.0))
        await until(Holding.entered.is_set, "the held request to run")
        queued = asyncio.create_task(sup.infer({"x": X}, 10.0))
        await until(lambda: len(sup.active._waiting) == 2, "a second request queued")
        Mendable.broken.clear()
        Mendable.unloadable.clear()
        started = time.perf_counter()
        with pytest.raises(ModelNotReady, match="unload"):
            await queued
        answered_after = time.perf_counter() - started
        still_running = not running.done()
        Holding.release.set()
        await running
        await sup.close(1)
        return answered_after, still_running

    answered_after, still_running = asyncio.run(go())
    assert still_running and answered_after < 5, "the queued request waited for the held one (no drain bound)"
