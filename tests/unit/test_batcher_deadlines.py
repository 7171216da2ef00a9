"""DynamicBatcher back-pressure and deadlines: a full queue is refused (503 with Retry-After over
HTTP), a request timing out or cancelled in the queue frees its slot and never reaches `run_batch`,
and a deadline never fires on a request whose batch already runs. Recorder and helpers: batcher_support.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.errors import HotswapError, QueueFull, RequestTimeout
from tests.unit.batcher_support import Recorder, rows_of, run, start, submit, until

# -- back-pressure and deadlines ------------------------------------------------------------

def test_queue_full_raises_and_counts_only_waiting_requests():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
        running = submit(batcher, rows_of(0))
        await rec.started.wait()  # the worker holds `running`: it no longer counts as queued
        assert batcher.queued == 0
        queued = [submit(batcher, rows_of(1)), submit(batcher, rows_of(2))]
        assert batcher.queued == 2
        with pytest.raises(QueueFull) as info:
            submit(batcher, rows_of(3))
        assert info.value.status == 503
        assert "max_queue_size=2" in str(info.value)
        assert batcher.queued == 2
        rec.gate.set()
        await asyncio.gather(running.future, *(r.future for r in queued))
        assert rec.rows == [1, 1, 1]
        assert all(float(b[0].inputs["x"][0, 0]) != 3 for b in rec.batches)
        # Room again once the queue drained.
        await submit(batcher, rows_of(4)).future

    run(body())


def test_queue_full_is_503_with_retry_after_over_http():
    from fastapi.testclient import TestClient

    from hotswap.backends.registry import BackendRegistry
    from hotswap.config import HotswapConfig
    from hotswap.serve.app import create_app

    app = create_app(HotswapConfig(), BackendRegistry())

    @app.get("/test/queue-full")
    async def queue_full():
        raise QueueFull("queue full: 2 requests waiting (batching.max_queue_size=2)")

    @app.get("/test/timeout")
    async def timed_out():
        raise RequestTimeout("request timed out after 50 ms in the queue (timeout)")

    with TestClient(app, base_url="http://localhost") as client:  # a loopback Host passes the guard
        response = client.get("/test/queue-full")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "max_queue_size=2" in response.json()["error"]
        response = client.get("/test/timeout")
        assert response.status_code == 504
        assert "retry-after" not in response.headers


def test_a_request_timing_out_in_the_queue_never_reaches_run_batch():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=1)
        blocker = submit(batcher, rows_of(0))
        await rec.started.wait()
        late = submit(batcher, rows_of(1), timeout_s=0.05)
        with pytest.raises(RequestTimeout) as info:
            await late.future
        assert info.value.status == 504 and isinstance(info.value, HotswapError)
        assert "timed out after 50 ms in the queue" in str(info.value)
        assert late.started is None
        assert batcher.queued == 0, "an expired request frees its queue slot"
        after = submit(batcher, rows_of(2))  # max_queue_size=1: only fits if the slot was freed
        rec.gate.set()
        await asyncio.gather(blocker.future, after.future)
        assert not rec.ran(late)
        assert [r for b in rec.batches for r in b] == [blocker, after]
        await batcher.drain_and_stop()

    run(body())


def test_a_timeout_does_not_fire_once_the_batch_runs():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=0)
        request = submit(batcher, rows_of(1), timeout_s=0.05)
        await rec.started.wait()
        await asyncio.sleep(0.15)  # well past the deadline, but the request is running
        assert not request.future.done()
        rec.gate.set()
        result = await request.future
        np.testing.assert_array_equal(result["x_out"], np.full((1, 4), 2.0, np.float32))

    run(body())


def test_a_timeout_while_the_batch_fills_is_answered_once():
    """The deadline passes after a worker took the request but before the batch ran."""

    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=300, max_queue_size=1)
        request = submit(batcher, rows_of(1), timeout_s=0.05)
        with pytest.raises(RequestTimeout):
            await request.future
        assert batcher.queued == 0
        await asyncio.sleep(0.4)  # past the batch delay: the batch has been dispatched (or dropped)
        assert not rec.ran(request), "an expired request must never reach run_batch"
        # Accounting is intact: exactly one request fits again, and drain completes.
        ok = submit(batcher, rows_of(2))
        with pytest.raises(QueueFull):
            submit(batcher, rows_of(3))
        await ok.future
        await batcher.drain_and_stop()
        assert batcher.queued == 0

    run(body())


def test_a_cancelled_request_frees_its_slot_and_is_not_run():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=1)
        blocker = submit(batcher, rows_of(0))
        await rec.started.wait()
        cancelled = submit(batcher, rows_of(1))
        cancelled.future.cancel()  # the awaiting handler was cancelled (client gone, shutdown)
        await until(lambda: batcher.queued == 0, "the cancelled request to leave the queue count")
        after = submit(batcher, rows_of(2))
        rec.gate.set()
        await asyncio.gather(blocker.future, after.future)
        assert not rec.ran(cancelled)
        await batcher.drain_and_stop()

    run(body())


def test_the_deadline_of_a_request_cancelled_in_the_queue_passes_silently():
    """Its timer still fires, on a future already done: that must be a no-op, not an error the
    event loop reports (`set_exception` on a cancelled future raises InvalidStateError)."""
    async def body():
        reported: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=0)
        blocker = submit(batcher, rows_of(0))
        await rec.started.wait()
        cancelled = submit(batcher, rows_of(1), timeout_s=0.02)
        cancelled.future.cancel()
        await asyncio.sleep(0.1)  # past its deadline
        rec.gate.set()
        await blocker.future
        await batcher.drain_and_stop()
        assert reported == []

    run(body())
