"""Shared by the DynamicBatcher tests (test_batcher_coalescing, _stacking, _deadlines, _lifecycle, and
test_lone_slot): a batcher on a real event loop, with a recording `run_batch` that answers each request
with its own rows (as ModelRunner._run_batch does), and the helpers to start it and submit to it.
Every test body runs under asyncio.wait_for (`run`), so a hang fails instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import numpy as np

from hotswap.config import BatchingConfig
from hotswap.serve.batch import Batch, PendingRequest
from hotswap.serve.batcher import DynamicBatcher, Release

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

    Like the runner, it takes the batch in the worker's turn (recorded in `log` as
    "dispatched <rows>") and answers in the awaitable it returns. With `gated`, each batch
    waits for `gate` before computing; with `release_early`, it calls `release` after
    computing and before answering, as the runner does. A batch containing the POISON value
    fails: by raising (`raise_on_poison`), or via `batch.fail`.
    """

    def __init__(self, gated: bool = False, raise_on_poison: bool = False, release_early: bool = False) -> None:
        self.batches: list[list[PendingRequest]] = []
        self.rows: list[int] = []
        self.workers: list[int] = []
        self.dispatched_at: list[float] = []
        self.log: list[str] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.started = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.raise_on_poison = raise_on_poison
        self.release_early = release_early

    def ran(self, request: PendingRequest) -> bool:
        return any(r is request for batch in self.batches for r in batch)

    def __call__(self, index: int, batch: Batch, release: Release) -> Awaitable[None]:
        self.batches.append(list(batch.requests))
        self.rows.append(batch.rows)
        self.workers.append(index)
        self.dispatched_at.append(time.perf_counter())
        self.log.append(f"dispatched {batch.rows}")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.set()
        return self._answer(batch, release)

    async def _answer(self, batch: Batch, release: Release) -> None:
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
            if self.release_early:
                release()
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
