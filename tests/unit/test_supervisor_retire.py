"""What a failover leaves behind (serve/supervisor.py `_promote`, `_after_switch`), in process on real
onnxruntime sessions: the switch time observed, no return probe without `retry_primary_after_s`, and
the faulty runner's retirement, which a close at that moment waits for rather than cancels."""

from __future__ import annotations

import asyncio
import threading

from hotswap.errors import BackendError
from hotswap.serve.metrics import Metrics
from tests.unit import supervisor_support as support
from tests.unit.supervisor_support import Mendable, X, supervisor, until

registry = support.registry  # the backends' registry, and every test's mended backends
mended = support.mended


async def fail_over(sup) -> None:
    """Start `sup` on a mendable first entry, break it, and wait until the next entry serves."""
    await sup.start()
    Mendable.broken.set()
    try:
        await sup.infer({"x": X}, 10.0)
    except BackendError:
        pass  # a model without `retry` fails the request that found the backend broken
    await until(lambda: sup.active.selected.label == "onnxruntime" and sup._switching is None, "the failover")


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
