"""DynamicBatcher lifecycle and concurrency: drain_and_stop answers what is queued or filling, and
at its deadline fails what still waits while the running batch finishes on its own; several workers
run batches side by side. Recorder and helpers: batcher_support.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.errors import ModelNotReady, QueueFull
from tests.unit.batcher_support import LONG_DELAY_MS, Recorder, rows_of, run, start, submit, until

# -- lifecycle and concurrency ---------------------------------------------------------------

def test_drain_and_stop_finishes_queued_requests_then_refuses():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=0)
        requests = [submit(batcher, rows_of(i)) for i in range(3)]
        await rec.started.wait()
        drain = asyncio.create_task(batcher.drain_and_stop())
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="being unloaded") as info:
            submit(batcher, rows_of(9))
        assert info.value.status == 503
        await asyncio.sleep(0.05)
        assert not drain.done(), "drain waits for the running and queued requests"
        rec.gate.set()
        await drain
        assert all(r.future.done() and not r.future.exception() for r in requests)
        assert rec.rows == [1, 1, 1]
        assert all(t.done() for t in batcher._tasks), "workers stop after the drain"
        with pytest.raises(QueueFull):
            submit(batcher, rows_of(10))

    run(body())


def test_drain_while_a_batch_is_filling_answers_it():
    """A worker took the request and waits for more: drain must not cancel it mid-batch."""

    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=300)
        request = submit(batcher, rows_of(3))
        await until(lambda: batcher.queued == 0, "a worker to take the request")
        await batcher.drain_and_stop()
        assert request.future.done(), "drain returned with a request left unanswered"
        np.testing.assert_array_equal(request.future.result()["x_out"], np.full((1, 4), 6.0, np.float32))

    run(body())


def test_drain_deadline_fails_waiting_requests_and_leaves_the_running_batch():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=0)
        running = submit(batcher, rows_of(1))
        await rec.started.wait()
        queued = [submit(batcher, rows_of(2)), submit(batcher, rows_of(3), timeout_s=60)]
        await batcher.drain_and_stop(timeout_s=0.05)  # returns although `running` is stuck on the gate
        for request in queued:
            with pytest.raises(ModelNotReady, match="being unloaded") as info:
                await request.future
            assert info.value.status == 503 and request.started is None
        assert batcher.queued == 0 and not running.future.done()
        assert all(t.done() for t in batcher._tasks), "workers stop at the deadline"
        with pytest.raises(QueueFull):
            submit(batcher, rows_of(9))
        rec.gate.set()  # the running batch finishes on its own and still answers its caller
        np.testing.assert_array_equal((await running.future)["x_out"], np.full((1, 4), 2.0, np.float32))
        assert rec.batches == [[running]]

    run(body())


def test_drain_deadline_fails_a_filling_batch_without_running_it():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=LONG_DELAY_MS, adaptive_delay=False)
        request = submit(batcher, rows_of(1))
        await until(lambda: batcher.queued == 0, "a worker to take the request")
        await batcher.drain_and_stop(timeout_s=0.05)
        with pytest.raises(ModelNotReady):
            await request.future
        assert not rec.batches and all(t.done() for t in batcher._tasks)

    run(body())


def test_drain_within_its_deadline_answers_everything():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=2, max_queue_delay_ms=20)
        requests = [submit(batcher, rows_of(i)) for i in range(5)]
        await batcher.drain_and_stop(timeout_s=10)
        assert all(r.future.done() and r.future.exception() is None for r in requests)

    run(body())


def test_drain_of_an_idle_batcher_returns():
    async def body():
        batcher = start(Recorder(), workers=2)
        await batcher.drain_and_stop()
        assert all(t.done() for t in batcher._tasks)

    run(body())


def test_workers_run_batches_concurrently():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, workers=2, max_batch_size=1, max_queue_delay_ms=0)
        requests = [submit(batcher, rows_of(i)) for i in range(3)]
        await until(lambda: rec.in_flight == 2, "two batches in flight")
        assert sorted(rec.workers) == [0, 1]
        assert batcher.queued == 1, "the third request waits for a free worker"
        rec.gate.set()
        await asyncio.gather(*(r.future for r in requests))
        assert rec.max_in_flight == 2 and rec.rows == [1, 1, 1]
        await batcher.drain_and_stop()

    run(body())


def test_requests_left_behind_are_picked_up_by_a_free_worker():
    """Worker 0 is stuck; requests of another shape still run on worker 1."""

    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, workers=2, max_batch_size=4, max_queue_delay_ms=0)
        stuck = submit(batcher, rows_of(1, width=8))
        await rec.started.wait()
        other = submit(batcher, rows_of(2, width=3))
        await until(lambda: rec.in_flight == 2, "the second worker to take the other request")
        rec.gate.set()
        await asyncio.gather(stuck.future, other.future)
        assert sorted(rec.workers) == [0, 1]

    run(body())
