"""DynamicBatcher on a real event loop, with a recording `run_batch` that answers each
request with its own rows (as ModelRunner._run_batch does; tests/unit/batcher_support.py):
coalescing, i.e. how requests gather into batches up to max_batch_size within the queue delay, and
the adaptive delay that stops waiting when waiting never pays off.

No test depends on the machine being fast: orderings are forced with events and gates,
and the few wall-clock bounds are loose (the only lower bound is the configured delay).
Every test body runs under asyncio.wait_for, so a hang fails instead of stalling the run.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.serve.batch import PendingRequest
from tests.unit.batcher_support import LONG_DELAY_MS, NO_WAIT_S, Recorder, rows_of, run, start, submit

# -- coalescing ---------------------------------------------------------------------------

def test_requests_coalesce_up_to_max_batch_size():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=200)
        requests = [submit(batcher, rows_of(i)) for i in range(10)]
        results = await asyncio.gather(*(r.future for r in requests))
        assert rec.rows == [4, 4, 2]
        flat = [r for batch in rec.batches for r in batch]
        assert flat == requests, "batches take requests in arrival order"
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["x_out"], np.full((1, 4), 2 * i, np.float32))
        await batcher.drain_and_stop()

    run(body())


def test_full_batches_do_not_wait_for_the_delay():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=LONG_DELAY_MS)
        requests = [submit(batcher, rows_of(i)) for i in range(8)]
        await asyncio.wait_for(asyncio.gather(*(r.future for r in requests)), NO_WAIT_S)
        assert rec.rows == [4, 4]

    run(body())


def test_batch_waits_for_late_requests_within_the_delay():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=2, max_queue_delay_ms=LONG_DELAY_MS)
        first = submit(batcher, rows_of(1))
        await asyncio.sleep(0.02)
        assert not rec.batches, "the first request waits for company"
        second = submit(batcher, rows_of(2))
        # The batch is full: no wait for the delay.
        await asyncio.wait_for(asyncio.gather(first.future, second.future), NO_WAIT_S)
        assert rec.rows == [2]

    run(body())


def test_delay_bound_holds():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=50)
        request = submit(batcher, rows_of(7))
        result = await request.future
        np.testing.assert_array_equal(result["x_out"], np.full((1, 4), 14, np.float32))
        waited = rec.dispatched_at[0] - request.enqueued
        assert waited >= 0.05 - 0.01, f"dispatched after {waited * 1000:.1f} ms, before the 50 ms delay"
        assert waited < 2.0, f"dispatched after {waited:.2f} s, long past the 50 ms delay"
        assert request.started is not None and request.started >= request.enqueued

    run(body())


def waits_of(rec: Recorder, requests: list[PendingRequest]) -> list[float]:
    return [at - r.enqueued for at, r in zip(rec.dispatched_at, requests)]


def test_adaptive_delay_stops_waiting_when_waiting_never_pays_off():
    """One request at a time (concurrency 1): after a few fruitless waits the batcher dispatches
    at once, except for a periodic probe; with adaptive_delay off every request waits."""
    async def sequential(adaptive: bool, count: int) -> list[float]:
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=100, adaptive_delay=adaptive)
        requests = []
        for i in range(count):
            requests.append(submit(batcher, rows_of(i)))
            await requests[-1].future
        await batcher.drain_and_stop()
        assert rec.rows == [1] * count
        return waits_of(rec, requests)

    async def body():
        adaptive = await sequential(True, 30)
        assert min(adaptive[:5]) >= 0.09, "waits while it has not yet learnt that waiting is useless"
        late = adaptive[-10:]
        assert sum(w >= 0.09 for w in late) <= 1, f"still waiting at concurrency 1: {late}"
        assert sum(w < 0.05 for w in late) >= 9
        fixed = await sequential(False, 4)
        assert min(fixed) >= 0.09, "adaptive_delay=false waits the full delay every time"

    run(body())


def test_adaptive_delay_keeps_waiting_while_requests_keep_arriving():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=200)
        for round_ in range(20):  # each round: one request, a second one arrives during the wait
            first = submit(batcher, rows_of(round_))
            await asyncio.sleep(0.01)
            second = submit(batcher, rows_of(round_))
            await asyncio.gather(first.future, second.future)
        assert rec.rows == [2] * 20, "every round was batched: waiting kept paying off"
        await batcher.drain_and_stop()

    run(body())


def test_adaptive_delay_off_waits_the_whole_delay_however_often_waiting_brought_nobody():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=5, adaptive_delay=False)
        waits = []
        for i in range(24):  # adaptive, the wait would stop after about 14 of these
            request = submit(batcher, rows_of(i))
            await request.future
            waits.append(rec.dispatched_at[-1] - request.enqueued)
        assert batcher._wait_payoff < 0.05 and min(waits) >= 0.0049, waits
        await batcher.drain_and_stop()

    run(body())


@pytest.mark.parametrize("wait_after_busy", [True, False])
def test_a_worker_freed_after_a_busy_spell_waits_for_company_only_with_wait_after_busy(wait_after_busy):
    """B and C queue while A's batch runs longer than the delay; when it ends, D arrives 50 ms later.
    With wait_after_busy the worker waits up to the delay from when it took B: D joins B and C.
    Without, the delay counts from B's arrival, long passed: B and C leave at once, D alone."""
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=200, wait_after_busy=wait_after_busy)
        a = submit(batcher, rows_of(1))
        await rec.started.wait()
        b, c = submit(batcher, rows_of(2)), submit(batcher, rows_of(3))
        await asyncio.sleep(0.3)  # past B's and C's delay
        rec.gate.set()
        await a.future
        await asyncio.sleep(0.05)
        d = submit(batcher, rows_of(4))
        await asyncio.gather(b.future, c.future, d.future)
        await batcher.drain_and_stop()
        return rec.rows

    assert run(body()) == ([1, 3] if wait_after_busy else [1, 2, 1])


def test_zero_delay_dispatches_what_is_there():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=0)
        requests = [submit(batcher, rows_of(i)) for i in range(3)]
        await asyncio.gather(*(r.future for r in requests))
        assert sum(rec.rows) == 3 and all(r <= 8 for r in rec.rows)

    run(body())
