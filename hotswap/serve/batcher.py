"""Dynamic batching: one queue per model, one future per request, N instance workers.

Each worker owns one backend instance. It takes the oldest queued request, then keeps
adding queued requests whose tensors can be stacked with it (same dtypes and non-batch
dims) until `max_batch_size` rows or until `max_queue_delay_ms` after the first request
was queued. A batch's failure is set on each of its requests and on nothing else. A
request whose deadline passes while queued is answered with RequestTimeout and never
reaches a backend.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hotswap.errors import QueueFull, RequestTimeout
from hotswap.models.config import BatchingConfig
from hotswap.models.signature import Tensors


@dataclass(eq=False)
class PendingRequest:
    """One request waiting for (or in) a batch."""

    inputs: Tensors
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    expired: bool = False
    timer: asyncio.TimerHandle | None = None
    queued: bool = True  # counted in DynamicBatcher.queued: not yet taken, expired or cancelled


def stack_key(inputs: Tensors) -> tuple:
    """Requests stack when names, dtypes and non-batch dims agree."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


PROBE_EVERY = 16

RunBatch = Callable[[int, list[PendingRequest]], Awaitable[None]]


class DynamicBatcher:
    """Queues requests and feeds batches to `workers` instance workers via `run_batch`."""

    def __init__(self, config: BatchingConfig, run_batch: RunBatch, workers: int) -> None:
        self.config = config
        self._run_batch = run_batch
        self._workers = workers
        self._queue: deque[PendingRequest] = deque()
        self._queued = 0  # requests in _queue not yet taken, expired or cancelled
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._running = 0  # batches filling or running
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._wait_payoff = 1.0
        self._decisions = 0

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i), name=f"hotswap-batcher-{i}") for i in range(self._workers)]

    def submit(self, inputs: Tensors, rows: int, timeout_s: float | None) -> PendingRequest:
        """Queue a request; its future resolves to its own output rows."""
        if self._closed:
            raise QueueFull("model is being unloaded")
        if self._queued >= self.config.max_queue_size:
            raise QueueFull(f"queue full: {self._queued} requests waiting (batching.max_queue_size="
                            f"{self.config.max_queue_size})")
        loop = asyncio.get_running_loop()
        request = PendingRequest(inputs, rows, stack_key(inputs), loop.create_future())
        request.future.add_done_callback(lambda _: self._on_done(request))
        if timeout_s is not None:
            request.timer = loop.call_later(timeout_s, self._expire, request, timeout_s)
        self._queue.append(request)
        self._queued += 1
        self._idle.clear()
        self._arrived.set()
        return request

    def _expire(self, request: PendingRequest, timeout_s: float) -> None:
        if request.started is None and not request.future.done():
            request.expired = True
            self._unqueue(request)
            request.future.set_exception(RequestTimeout(
                f"request timed out after {timeout_s * 1000:.0f} ms in the queue (timeout)"))
            self._check_idle()

    def _unqueue(self, request: PendingRequest) -> None:
        if request.queued:
            request.queued = False
            self._queued -= 1

    def _on_done(self, request: PendingRequest) -> None:
        """Done callback: a request cancelled while queued (its caller went away) frees its slot."""
        if request.queued:
            self._unqueue(request)
            self._check_idle()

    def _pop(self, key: tuple | None, room: int) -> PendingRequest | None:
        """Remove and return the oldest live request matching `key` that fits in `room` rows."""
        for request in self._queue:
            if request.expired or request.future.done():
                continue
            if key is None or (request.key == key and request.rows <= room):
                self._queue.remove(request)
                self._unqueue(request)
                return request
        # Drop expired requests at the front so the deque does not grow.
        while self._queue and (self._queue[0].expired or self._queue[0].future.done()):
            self._queue.popleft()
        return None

    async def _next_batch(self) -> list[PendingRequest]:
        while (first := self._pop(None, 0)) is None:
            self._arrived.clear()
            await self._arrived.wait()
        self._running += 1  # a filling batch counts as running, so drain_and_stop waits for it
        batch, rows = [first], first.rows
        limit = self.config.max_batch_size
        deadline = first.enqueued + self.config.max_queue_delay_ms / 1000
        waited, gained = False, 0
        while rows < limit:
            nxt = self._pop(first.key, limit - rows)
            if nxt is not None:
                batch.append(nxt)
                rows += nxt.rows
                gained += waited
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or (not waited and not self._worth_waiting()):
                break
            waited = True
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        if waited:
            # Running average of whether waiting brought in more requests (1) or not (0).
            self._wait_payoff = 0.8 * self._wait_payoff + 0.2 * (gained > 0)
        return batch

    def _worth_waiting(self) -> bool:
        """Wait for more requests only while waiting has recently paid off.

        At low concurrency a lone request would otherwise pay the full delay for nothing; every
        PROBE_EVERY-th decision still waits, so rising load is noticed.
        """
        if not self.config.adaptive_delay:
            return True
        self._decisions += 1
        return self._wait_payoff >= 0.05 or self._decisions % PROBE_EVERY == 0

    async def _worker(self, index: int) -> None:
        while True:
            batch = await self._next_batch()
            now = time.perf_counter()
            for request in batch:
                if request.timer is not None:
                    request.timer.cancel()
            # Requests that expired or were cancelled while the batch filled never run.
            batch = [request for request in batch if not request.future.done()]
            for request in batch:
                request.started = now
            try:
                if batch:
                    await self._run_batch(index, batch)
            except Exception as exc:  # run_batch sets results itself; this is a last resort
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            finally:
                self._running -= 1
                self._check_idle()
            if self._queue:
                self._arrived.set()  # another worker may be waiting on requests left behind

    def _check_idle(self) -> None:
        if self._queued == 0 and self._running == 0:
            self._idle.set()

    async def drain_and_stop(self) -> None:
        """Refuse new requests, let queued and running ones finish, then stop the workers."""
        self._closed = True
        self._check_idle()
        await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
