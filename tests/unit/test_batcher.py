"""DynamicBatcher on a real event loop, with a recording `run_batch` that answers each
request with its own rows (as ModelRunner._run_batch does).

No test depends on the machine being fast: orderings are forced with events and gates,
and the few wall-clock bounds are loose (the only lower bound is the configured delay).
Every test body runs under asyncio.wait_for, so a hang fails instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from hotswap.config import BatchingConfig
from hotswap.errors import BackendError, HotswapError, ModelNotReady, QueueFull, RequestTimeout
from hotswap.serve.batch import Batch, PendingRequest, stack_key
from hotswap.serve.batcher import DynamicBatcher

POISON = -1.0
TEST_TIMEOUT_S = 20
LONG_DELAY_MS = 10_000  # the most BatchingConfig allows: far past any wait a test expects
NO_WAIT_S = LONG_DELAY_MS / 2000  # a bound that only a wait for LONG_DELAY_MS can break


def run(coro):
    async def guarded():
        return await asyncio.wait_for(coro, TEST_TIMEOUT_S)

    return asyncio.run(guarded())


class Recorder:
    """A run_batch that records every batch and answers like the real runner, through the
    real Batch: inputs() to stack, scatter() to answer, fail() on error.

    With `gated`, each batch waits for `gate` before computing. A batch containing the
    POISON value fails: by raising (`raise_on_poison`), or via `batch.fail`.
    """

    def __init__(self, gated: bool = False, raise_on_poison: bool = False) -> None:
        self.batches: list[list[PendingRequest]] = []
        self.rows: list[int] = []
        self.workers: list[int] = []
        self.dispatched_at: list[float] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.started = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.raise_on_poison = raise_on_poison

    def ran(self, request: PendingRequest) -> bool:
        return any(r is request for batch in self.batches for r in batch)

    async def __call__(self, index: int, batch: Batch) -> None:
        self.batches.append(list(batch.requests))
        self.rows.append(batch.rows)
        self.workers.append(index)
        self.dispatched_at.append(time.perf_counter())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.set()
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            inputs = batch.inputs()
            if any((a == POISON).any() for a in inputs.values()):
                error = RuntimeError(f"poisoned batch of {len(batch.requests)}")
                if self.raise_on_poison:
                    raise error
                batch.fail(error)
                return
            batch.scatter({f"{name}_out": array * 2 for name, array in inputs.items()})
        finally:
            self.in_flight -= 1


def rows_of(value: float, rows: int = 1, width: int = 4, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=dtype)}


def start(recorder: Recorder, workers: int = 1, **batching) -> DynamicBatcher:
    batcher = DynamicBatcher(BatchingConfig(**batching), recorder, workers)
    batcher.start()
    return batcher


def submit(batcher: DynamicBatcher, inputs: dict[str, np.ndarray], timeout_s: float | None = None):
    rows = next(iter(inputs.values())).shape[0]
    return batcher.submit(inputs, rows, timeout_s)


async def until(condition, what: str, limit_s: float = 10.0) -> None:
    """Yield to the loop until `condition()` holds (no fixed sleeps)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


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


# -- each caller gets its own rows ------------------------------------------------------------

def test_each_caller_gets_its_own_rows_in_order():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=64, max_queue_delay_ms=50)
        requests = []
        for n in range(1, 6):
            x = (100 * n + np.arange(n * 3, dtype=np.float32)).reshape(n, 3)
            w = np.arange(n, dtype=np.int64) + 1000 * n
            requests.append((x, w, batcher.submit({"x": x, "w": w}, n, None)))
        results = await asyncio.gather(*(r.future for _, _, r in requests))
        assert rec.rows == [15], "all five stack into one batch"
        for (x, w, _), result in zip(requests, results):
            np.testing.assert_array_equal(result["x_out"], x * 2)
            np.testing.assert_array_equal(result["w_out"], w * 2)

    run(body())


def test_requests_are_never_split_and_batches_stay_within_the_limit():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=6, max_queue_delay_ms=20)
        sizes = [1, 2, 3, 4, 5, 6, 2, 1]
        requests = [submit(batcher, rows_of(float(i), rows=n)) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(r.future for r in requests))
        assert all(rows <= 6 for rows in rec.rows), rec.rows
        assert sum(rec.rows) == sum(sizes)
        for i, (n, result) in enumerate(zip(sizes, results)):
            np.testing.assert_array_equal(result["x_out"], np.full((n, 4), 2 * i, np.float32))
        # First fit: [1, 2, 3] fills 6; the 4-row request then takes the later 2-row one.
        assert [[r.rows for r in b] for b in rec.batches][:2] == [[1, 2, 3], [4, 2]]

    run(body())


def test_a_request_larger_than_max_batch_size_runs_alone():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=20)
        big = submit(batcher, rows_of(3.0, rows=10))
        small = submit(batcher, rows_of(4.0, rows=1))
        big_result, small_result = await asyncio.gather(big.future, small.future)
        assert rec.rows == [10, 1]
        assert big_result["x_out"].shape == (10, 4) and small_result["x_out"].shape == (1, 4)

    run(body())


def test_max_batch_size_one_disables_batching():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=1_000)
        requests = [submit(batcher, rows_of(i)) for i in range(4)]
        await asyncio.gather(*(r.future for r in requests))
        assert rec.rows == [1, 1, 1, 1]

    run(body())


def test_a_request_cancelled_while_its_batch_runs_does_not_shift_later_rows():
    """The cancelled request's rows were computed: scatter must step over them."""

    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=6, max_queue_delay_ms=LONG_DELAY_MS)
        gone = submit(batcher, rows_of(1.0, rows=2))
        kept = [submit(batcher, rows_of(2.0, rows=1)), submit(batcher, rows_of(3.0, rows=3))]
        await rec.started.wait()
        gone.future.cancel()  # its caller went away while the backend computes its rows
        rec.gate.set()
        middle, last = await asyncio.gather(*(r.future for r in kept))
        assert rec.batches == [[gone, *kept]] and rec.rows == [6]
        np.testing.assert_array_equal(middle["x_out"], np.full((1, 4), 4.0, np.float32))
        np.testing.assert_array_equal(last["x_out"], np.full((3, 4), 6.0, np.float32))
        await batcher.drain_and_stop()

    run(body())


def test_batch_stacks_scatters_and_fails_only_live_requests():
    async def body():
        loop = asyncio.get_running_loop()

        def request(value: float, rows: int) -> PendingRequest:
            inputs = rows_of(value, rows)
            return PendingRequest(inputs, rows, stack_key(inputs), loop.create_future())

        alone = request(1.0, 2)
        assert Batch([alone]).inputs()["x"] is alone.inputs["x"], "a lone request is not copied"
        a, b, c = request(1.0, 1), request(2.0, 2), request(3.0, 1)
        batch = Batch([a, b, c])
        assert batch.rows == 4
        np.testing.assert_array_equal(batch.inputs()["x"][:, 0], [1, 2, 2, 3])
        with pytest.raises(BackendError, match="expected 4 rows"):
            batch.scatter({"y": np.zeros((3, 1))})
        assert not any(r.future.done() for r in (a, b, c)), "a bad output answers nobody"
        b.future.cancel()
        batch.scatter({"y": np.arange(4)})
        np.testing.assert_array_equal(a.future.result()["y"], [0])
        np.testing.assert_array_equal(c.future.result()["y"], [3])
        d, e = request(4.0, 1), request(5.0, 1)
        d.future.set_result({})
        Batch([d, e]).fail(RuntimeError("boom"))
        assert d.future.result() == {} and isinstance(e.future.exception(), RuntimeError)

    run(body())


# -- failures stay with their batch -------------------------------------------------------

@pytest.mark.parametrize("raise_on_poison", [False, True], ids=["sets-exception", "raises"])
def test_a_failing_batch_fails_only_its_own_requests(raise_on_poison):
    async def body():
        rec = Recorder(raise_on_poison=raise_on_poison)
        batcher = start(rec, max_batch_size=2, max_queue_delay_ms=50)
        requests = [submit(batcher, rows_of(v)) for v in (1.0, POISON, 3.0, 4.0)]
        results = await asyncio.gather(*(r.future for r in requests), return_exceptions=True)
        assert [[r.rows for r in b] for b in rec.batches] == [[1, 1], [1, 1]]
        assert all(isinstance(r, RuntimeError) and "poisoned batch of 2" in str(r) for r in results[:2]), results
        np.testing.assert_array_equal(results[2]["x_out"], np.full((1, 4), 6.0, np.float32))
        np.testing.assert_array_equal(results[3]["x_out"], np.full((1, 4), 8.0, np.float32))
        # The worker survives a failed batch.
        after = submit(batcher, rows_of(5.0))
        np.testing.assert_array_equal((await after.future)["x_out"], np.full((1, 4), 10.0, np.float32))
        await batcher.drain_and_stop()

    run(body())


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


# -- stacking -------------------------------------------------------------------------------

def test_different_stack_keys_are_not_stacked():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=16, max_queue_delay_ms=100)
        a = submit(batcher, rows_of(1, width=8))
        b = submit(batcher, rows_of(2, width=3))
        c = submit(batcher, rows_of(3, width=8))
        d = submit(batcher, rows_of(4, width=8, dtype=np.float64))
        e = submit(batcher, rows_of(5, width=3))
        f = batcher.submit({"y": np.zeros((1, 8), np.float32)}, 1, None)
        results = await asyncio.gather(*(r.future for r in (a, b, c, d, e)), f.future)
        assert rec.batches == [[a, c], [b, e], [d], [f]]
        for batch in rec.batches:
            assert len({r.key for r in batch}) == 1
        assert results[1]["x_out"].shape == (1, 3) and results[3]["x_out"].dtype == np.float64

    run(body())


def test_stack_key():
    x8 = {"x": np.zeros((2, 8), np.float32)}
    assert stack_key(x8) == stack_key({"x": np.ones((5, 8), np.float32)}), "the batch dim is free"
    assert stack_key(x8) != stack_key({"x": np.zeros((2, 9), np.float32)})
    assert stack_key(x8) != stack_key({"x": np.zeros((2, 8), np.float16)})
    assert stack_key(x8) != stack_key({"y": np.zeros((2, 8), np.float32)})


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


# -- end to end through the real ModelRunner --------------------------------------------------

def test_model_runner_batches_real_requests(tiny):
    from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
    from hotswap.backends.registry import BackendRegistry
    from hotswap.config import ModelConfig
    from hotswap.serve.metrics import Metrics
    from hotswap.serve.runner import ModelRunner

    config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}],
                         batching={"max_batch_size": 8, "max_queue_delay_ms": 50})
    registry = BackendRegistry(available={"onnxruntime": OnnxRuntimeBackend})

    async def body():
        runner = ModelRunner(config, registry, Metrics())
        await runner.start()
        try:
            rng = np.random.default_rng(0)
            inputs = [{"x": rng.standard_normal((n, 8)).astype(np.float32)} for n in (1, 3, 2, 5, 1, 4)]
            results = await asyncio.gather(*(runner.infer(x, None) for x in inputs))
            for x, result in zip(inputs, results):
                ref = tiny.reference(x)
                np.testing.assert_allclose(result["y"], ref["y"], atol=1e-4)
                np.testing.assert_allclose(result["z"], ref["z"], atol=1e-4)
        finally:
            await runner.close()

    run(body())
