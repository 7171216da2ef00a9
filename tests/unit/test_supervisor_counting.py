"""How the supervisor counts the active runner's batches (`_on_batch`), in-process on real onnxruntime
sessions: consecutive failures against `after_errors`, the switch time measured from the first failed
batch (a hung one included), the recent batches kept for the return probe only when there is one,
requests queued on a faulty runner moved to the next one, a model without failover whose batch fails,
a degraded runner serving on without walking the chain again, and a batch whose answer cannot be
split between its requests counted as failed."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.errors import BackendError
from tests.unit import supervisor_support as support
from tests.unit.supervisor_support import Mendable, Unloadable, X, supervisor, until, with_backends

registry = support.registry  # the backends' registry, and every test's mended backends
mended = support.mended


def test_after_errors_counts_consecutive_failures_and_the_switch_time_starts_at_the_first(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], after_errors=2, retry=False)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        outcomes = []
        for _ in range(2):
            try:
                await sup.infer({"x": X}, 10.0)
                outcomes.append("ok")
            except BackendError:
                outcomes.append("failed")
            outcomes.append(sup.active.selected.label)
            await asyncio.sleep(0.2)  # the second failure comes 0.2 s after the first
        await until(lambda: sup.active.selected.label == "onnxruntime", "the failover")
        history = list(sup.log.history)
        await sup.close(1)
        return outcomes, history

    outcomes, history = asyncio.run(go())
    assert outcomes[:3] == ["failed", "mendable", "failed"], "one failure of two does not fail over"
    assert [(h["from"], h["to"], h["reason"]) for h in history] == [("mendable", "onnxruntime", "errors")]
    assert 200 <= history[0]["switch_ms"] < 1000, "measured from the first failed batch"


def test_a_success_resets_the_count_of_consecutive_failures(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], after_errors=2, retry=False)

    async def go():
        await sup.start()
        for _ in range(3):  # fail, succeed, fail, succeed, ...: never two in a row
            Mendable.broken.set()
            with pytest.raises(BackendError):
                await sup.infer({"x": X}, 10.0)
            Mendable.broken.clear()
            await sup.infer({"x": X}, 10.0)
        label = sup.active.selected.label
        await sup.close(1)
        return label

    assert asyncio.run(go()) == "mendable"


def test_a_hung_batch_fails_over_at_once_timed_from_when_it_started(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], after_errors=5, batch_timeout_ms=200)
    want = tiny.reference({"x": X})["y"]

    async def go():
        await sup.start()
        Mendable.gate = threading.Semaphore(0)  # the next call on mendable never returns by itself
        out = await sup.infer({"x": X}, 10.0)  # hangs, fails over, and is retried on onnxruntime
        history = list(sup.log.history)
        Mendable.gate.release(10)
        await sup.close(1)
        return out, history

    out, history = asyncio.run(go())
    np.testing.assert_allclose(out["y"], want, rtol=0, atol=1e-5)
    assert [(h["from"], h["to"], h["reason"]) for h in history] == [("mendable", "onnxruntime", "hung")]
    assert history[0]["switch_ms"] >= 200, "the hung batch's own time counts"


@pytest.mark.parametrize("failover, kept", [(None, 0), ({"retry": True}, 0), ({"retry_primary_after_s": 60}, 1)])
def test_recent_batches_are_kept_only_for_a_return_probe(tiny, registry, failover, kept):
    sup = supervisor(tiny, registry, ["onnxruntime"], with_failover=failover is not None, **(failover or {}))

    async def go():
        await sup.start()
        out = await sup.infer({"x": X}, 10.0)
        recent, executed = len(sup._recent), sup.active.series.execution_count._value.get()
        await sup.close(1)
        return out, recent, executed

    out, recent, executed = asyncio.run(go())
    np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
    assert recent == kept and executed == 1


def test_without_failover_a_failed_batch_fails_its_request_and_the_model_serves_on(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable"], with_failover=False)

    async def go():
        await sup.start()
        Mendable.broken.set()
        for _ in range(3):  # failed batches one after another: none stops the model serving
            with pytest.raises(BackendError, match="device lost"):
                await sup.infer({"x": X}, 10.0)
        Mendable.broken.clear()
        out = await sup.infer({"x": X}, 10.0)
        await sup.close(1)
        return out

    np.testing.assert_allclose(asyncio.run(go())["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)


def test_requests_queued_on_a_faulty_backend_are_answered_by_the_next_entry(tiny, registry):
    """One batch runs (and will fail) while three requests wait behind it: on the switch the waiting
    ones move to the new runner instead of failing with the faulty one."""
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], batching={"max_batch_size": 1,
                     "max_queue_delay_ms": 0, "inline_max_us": 0}, retry=False)
    want = tiny.reference({"x": X})["y"]

    async def go():
        await sup.start()
        Mendable.broken.set()
        Mendable.gate = threading.Semaphore(0)
        first = asyncio.create_task(sup.infer({"x": X}, 10.0))
        assert await asyncio.to_thread(Mendable.entered.wait, 10)
        waiting = [asyncio.create_task(sup.infer({"x": X}, 10.0)) for _ in range(3)]
        await asyncio.sleep(0.05)  # queued behind the running batch
        Mendable.gate.release()  # the first batch fails; the next one starts and waits for a permit
        await until(lambda: sup.active.selected.label == "onnxruntime", "the switch")
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        Mendable.gate.release(3)  # let the abandoned call on the old runner return
        label, state = sup.active.selected.label, sup.log.state
        await sup.close(1)
        return results, label, state

    results, label, state = asyncio.run(go())
    assert (label, state) == ("onnxruntime", "failed_over")
    assert isinstance(results[0], BackendError)  # retry off: the failed batch's own request fails
    for out in results[1:]:
        np.testing.assert_allclose(out["y"], want, rtol=0, atol=1e-5)


def test_with_no_later_entry_that_loads_the_faulty_backend_keeps_serving_degraded(tiny, registry, caplog):
    sup = supervisor(tiny, registry, ["mendable", "unloadable"])

    async def go():
        await sup.start()
        Mendable.broken.set()
        with pytest.raises(BackendError):
            await sup.infer({"x": X}, 10.0)
        await until(lambda: sup.log.state == "degraded", "the switch to give up")
        calls, attempts = Mendable.calls, Unloadable.attempts
        for _ in range(3):
            with pytest.raises(BackendError):  # degraded: no retries on it any more
                await sup.infer({"x": X}, 10.0)
        await asyncio.sleep(0.05)
        retried, walked = Mendable.calls - calls, Unloadable.attempts - attempts
        Mendable.broken.clear()
        out = await sup.infer({"x": X}, 10.0)
        summary = sup.log.summary()
        await sup.close(1)
        return retried, walked, out, summary

    retried, walked, out, summary = asyncio.run(go())
    assert retried == 3 and summary["reason"] == "errors; no later chain entry loads"
    assert walked == 0, "a degraded runner's failures do not walk the chain again"
    assert "model tiny: mendable is faulty (errors) and no later chain entry loads; it keeps serving" in caplog.text
    np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)



class Short(OnnxRuntimeBackend):
    """onnxruntime that answers a call of more than two rows one row short, so a batch of two
    two-row requests cannot be split between them; while `hold` is clear each call waits for it."""

    name = "short"
    hold = threading.Event()
    entered = threading.Event()

    def run(self, inputs):
        Short.entered.set()
        Short.hold.wait(10)
        answer = super().run(inputs)
        return {k: v[:-1] for k, v in answer.items()} if len(inputs["x"]) > 2 else answer


def test_a_batch_answered_with_too_few_rows_counts_as_a_failed_batch(tiny):
    sup = supervisor(tiny, with_backends(Short), ["short", "onnxruntime"])
    Short.hold.clear()
    Short.entered.clear()

    async def go():
        await sup.start()
        first = asyncio.create_task(sup.infer({"x": X[:1]}, 10.0))  # holds the one instance
        await until(Short.entered.is_set, "the first call")
        pair = [asyncio.create_task(sup.infer({"x": x}, 10.0)) for x in (X, X[::-1])]
        await asyncio.sleep(0.1)  # both queued behind it: they leave as one four-row batch
        Short.hold.set()
        answers = await asyncio.gather(first, *pair)
        history = list(sup.log.history)
        await sup.close(1)
        return answers, history

    try:
        answers, history = asyncio.run(go())
    finally:
        Short.hold.set()
    assert [(h["from"], h["to"], h["reason"]) for h in history] == [("short", "onnxruntime", "errors")]
    for answer, x in zip(answers, (X[:1], X, X[::-1])):  # the pair retried on the next entry, each its own rows
        np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5)
