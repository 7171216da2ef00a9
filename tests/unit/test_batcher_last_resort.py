"""The batcher's last resort: an exception that escapes `run_batch` (the runner answers its requests
itself, so this is a bug there or in an `on_batch` consumer such as the supervisor) fails the
requests still waiting and is logged with its traceback, also when every request was answered
before it was raised and no client would ever see it."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from hotswap.config import BatchingConfig
from hotswap.serve.batch import Batch
from hotswap.serve.batcher import DynamicBatcher, Release


def run_batches(run_batch) -> list:
    async def body():
        batcher = DynamicBatcher(BatchingConfig(max_queue_delay_ms=0), run_batch, 1)
        batcher.start()
        request = batcher.submit({"x": np.ones((2, 4), np.float32)}, 2, None)
        outcome = await asyncio.gather(request.future, return_exceptions=True)
        await batcher.drain_and_stop(5)
        return outcome

    return asyncio.run(asyncio.wait_for(body(), 20))


def test_an_error_after_the_answers_is_logged_and_the_answers_stand(caplog):
    async def answer_then_raise(index: int, batch: Batch, release: Release) -> None:
        batch.scatter({"y": batch.inputs()["x"] * 2})
        raise KeyError("a consumer of the batch's outcome broke")

    with caplog.at_level(logging.ERROR, logger="hotswap.batcher"):
        [answer] = run_batches(answer_then_raise)
    np.testing.assert_array_equal(answer["y"], np.full((2, 4), 2, np.float32))
    [record] = caplog.records
    assert record.getMessage() == "batch of 1 requests on worker 0: unexpected error"
    assert record.exc_info[0] is KeyError and "a consumer of the batch's outcome broke" in caplog.text


def test_an_error_before_the_answers_fails_the_waiting_requests_and_is_logged(caplog):
    async def raise_at_once(index: int, batch: Batch, release: Release) -> None:
        raise ValueError("bug in run_batch")

    with caplog.at_level(logging.ERROR, logger="hotswap.batcher"):
        [outcome] = run_batches(raise_at_once)
    assert isinstance(outcome, ValueError) and str(outcome) == "bug in run_batch"
    assert [r.exc_info[0] for r in caplog.records] == [ValueError]


def test_an_error_while_handing_a_batch_over_fails_it_and_the_worker_goes_on(caplog):
    """run_batch raising in the worker's turn, before it returns an awaitable: that batch fails and
    is logged, and the same worker runs the next one."""
    handed: list[int] = []

    def hand_over(index: int, batch: Batch, release: Release):
        handed.append(batch.rows)
        if len(handed) == 1:
            raise ValueError("bug while handing over")

        async def answer() -> None:
            batch.scatter({"y": batch.inputs()["x"] * 2})

        return answer()

    async def body():
        batcher = DynamicBatcher(BatchingConfig(max_batch_size=2, max_queue_delay_ms=0), hand_over, 1)
        batcher.start()
        requests = [batcher.submit({"x": np.full((rows, 4), 1, np.float32)}, rows, None) for rows in (2, 1)]
        outcomes = await asyncio.gather(*(r.future for r in requests), return_exceptions=True)
        await batcher.drain_and_stop(5)
        return outcomes

    with caplog.at_level(logging.ERROR, logger="hotswap.batcher"):
        failed, answered = asyncio.run(asyncio.wait_for(body(), 20))
    assert isinstance(failed, ValueError) and str(failed) == "bug while handing over"
    np.testing.assert_array_equal(answered["y"], np.full((1, 4), 2, np.float32))
    assert handed == [2, 1]
    assert [r.getMessage() for r in caplog.records] == ["batch of 1 requests on worker 0: unexpected error"]
