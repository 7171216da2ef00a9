"""The hand-over between one worker's batches: a run_batch that releases its worker once the instance
is free (as ModelRunner does, after computing and before answering) gets the worker's next batch
before the released batch's answers reach their callers; one that never releases holds the worker
until its batch is answered. Recorder and helpers: batcher_support.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.unit.batcher_support import Recorder, rows_of, run, start, submit


async def _note_answer(request, log: list[str]) -> None:
    await request.future
    log.append(f"answered {request.rows}")


@pytest.mark.parametrize("release_early, order", [
    (True, ["dispatched 1", "dispatched 2", "answered 1", "answered 2"]),
    (False, ["dispatched 1", "answered 1", "dispatched 2", "answered 2"]),
])
def test_the_next_batch_is_handed_over_before_the_answers_only_when_released(release_early, order):
    async def body():
        rec = Recorder(gated=True, release_early=release_early)
        batcher = start(rec, max_batch_size=2, max_queue_delay_ms=0)
        first, second = submit(batcher, rows_of(1.0, rows=1)), submit(batcher, rows_of(2.0, rows=2))
        callers = [asyncio.create_task(_note_answer(r, rec.log)) for r in (first, second)]
        await rec.started.wait()
        assert batcher.queued == 1, "the second request waits while the first batch computes"
        rec.gate.set()
        await asyncio.gather(*callers)
        assert rec.log == order
        np.testing.assert_array_equal(second.future.result()["x_out"], np.full((2, 4), 4.0, np.float32))
        await batcher.drain_and_stop()

    run(body())


def test_a_drain_deadline_during_a_released_batch_lets_it_answer():
    """The worker waiting for its instance is cancelled at the deadline; the batch still releases and answers."""

    async def body():
        rec = Recorder(gated=True, release_early=True)
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=0)
        running = submit(batcher, rows_of(5.0))
        await rec.started.wait()
        await batcher.drain_and_stop(timeout_s=0.05)
        assert all(t.done() for t in batcher._tasks) and not running.future.done()
        rec.gate.set()
        np.testing.assert_array_equal((await running.future)["x_out"], np.full((1, 4), 10.0, np.float32))

    run(body())
