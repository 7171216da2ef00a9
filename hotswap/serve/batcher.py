"""Dynamic batching: one queue per model, one future per request, N instance workers.

Each worker owns one backend instance. It takes the oldest queued request, then keeps
adding queued requests whose tensors can be stacked with it (same dtypes and non-batch
dims) until `max_batch_size` rows or until `max_queue_delay_ms` after the first request
was queued (with `wait_after_busy`, after the worker took it, if that is later), and hands
the batch to its instance. It forms the next one as soon as the instance is free again
(run_batch's `release`), before the last batch's answers go out. A batch's failure is set
on each of its requests and on nothing else. A request whose deadline passes while queued
is answered with RequestTimeout and never reaches a backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from hotswap.config import BatchingConfig
from hotswap.errors import ModelNotReady, QueueFull, RequestTimeout
from hotswap.models.signature import Tensors
from hotswap.serve.batch import Batch, PendingRequest, StackKey, stack_key

log = logging.getLogger("hotswap.batcher")

# Adaptive delay keeps a running average of whether a batch's wait for company brought in
# more requests (1) or not (0), and skips the wait while that average is low.
PAYOFF_WEIGHT = 0.2
"""Weight of the latest wait in the average: it mostly reflects the last ~5 waits."""
MIN_PAYOFF = 0.05
"""Below this average the wait is skipped: from 1.0, after 14 waits in a row that brought nobody."""
PROBE_EVERY = 16
"""Of the decisions to skip the wait, every PROBE_EVERY-th waits anyway (a probe), so rising load is noticed."""
MAX_PROBE_EVERY = 1024
"""Each probe that brought nobody doubles the interval to the next, up to this many decisions; one that
paid off resets it. At concurrency 1 every probe waits the whole delay for nobody: one in 16 requests
paying 2 ms put 125 µs on the mean, one in 1024 puts 2 µs."""

UNLOADING = "model is being unloaded"

Release = Callable[[], None]
RunBatch = Callable[[int, Batch, Release], Awaitable[None]]
"""run_batch(worker index, batch, release): answers the batch's requests via batch.scatter / batch.fail.
What it does before returning its awaitable happens in the worker's turn. It may call release() once the
instance is free again, before the answers go out, so the worker hands over its next batch first;
otherwise the worker is released when the batch is answered."""


class DynamicBatcher:
    """Queues requests and feeds batches to `workers` instance workers via `run_batch`.

    `_queue` holds exactly the live requests no worker has taken, in arrival order: a request
    leaves it when taken, when it times out, or (one loop turn later, via its done callback)
    when its caller cancels it. `queued` is its length, so there is no count to keep in step.
    """

    def __init__(self, config: BatchingConfig, run_batch: RunBatch, workers: int) -> None:
        self.config = config
        self._run_batch = run_batch
        self._workers = workers
        self._queue: dict[PendingRequest, None] = {}  # an ordered set: O(1) removal from the middle
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._batch_tasks: set[asyncio.Task[None]] = set()  # referenced so they are not collected
        self._running = 0  # batches filling or running
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._wait_payoff = 1.0
        self._probe_every = PROBE_EVERY
        self._until_probe = PROBE_EVERY  # decisions to skip the wait left before the next probe
        self._probing = False  # the next wait is a probe: its outcome sets the interval to the one after
        self._probe_granted = False  # lone_slot chose to probe: the next fill waits without a decision
        self._idle_workers: dict[int, None] = {}  # workers waiting for a first request, in index order

    @property
    def queued(self) -> int:
        """Requests waiting for a worker (not those in a filling or running batch)."""
        return len(self._queue)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i), name=f"hotswap-batcher-{i}") for i in range(self._workers)]

    def submit(self, inputs: Tensors, rows: int, timeout_s: float | None) -> PendingRequest:
        """Queue a request; its future resolves to its own output rows."""
        if self._closed:
            raise QueueFull(UNLOADING)
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(f"queue full: {len(self._queue)} requests waiting (batching.max_queue_size="
                            f"{self.config.max_queue_size})")
        loop = asyncio.get_running_loop()
        request = PendingRequest(inputs, rows, stack_key(inputs), loop.create_future())
        request.future.add_done_callback(lambda _: self._unqueue(request))
        if timeout_s is not None:
            request.timer = loop.call_later(timeout_s, self._expire, request, timeout_s)
        self._queue[request] = None
        self._idle.clear()
        self._arrived.set()
        return request

    def _expire(self, request: PendingRequest, timeout_s: float) -> None:
        # A request in a filling batch has left the queue but not started: it still times out.
        if request.started is None and request.live:
            request.future.set_exception(RequestTimeout(
                f"request timed out after {timeout_s * 1000:.0f} ms in the queue (timeout)"))
            self._unqueue(request)

    def _unqueue(self, request: PendingRequest) -> None:
        """Drop a request that will not be taken; a no-op for one already gone."""
        if request in self._queue:
            del self._queue[request]
            self._check_idle()

    def _take(self, key: StackKey | None, room: int) -> PendingRequest | None:
        """Remove and return the oldest live request matching `key` that fits in `room` rows."""
        for request in self._queue:
            # A cancelled request stays until its done callback runs; never hand it out.
            if request.live and (key is None or (request.key == key and request.rows <= room)):
                del self._queue[request]
                return request
        return None

    async def _take_first(self, index: int) -> PendingRequest:
        while (first := self._take(None, 0)) is None:
            self._arrived.clear()
            self._idle_workers[index] = None
            try:
                await self._arrived.wait()
            finally:
                del self._idle_workers[index]
        return first

    def lone_slot(self, accept: Callable[[int], bool]) -> int | None:
        """The index of an idle worker whose instance may run a new request's batch of one right now.

        Only when the request would run alone and at once through the queue too: nothing queued,
        that worker idle, and the batching policy not waiting for company (no delay configured, or
        the adaptive delay off its probe). `accept(index)` says whether the caller can run that
        instance's call without yielding to the event loop (serve/inline.py): the idle worker then
        never sees the request, and the caller saves the hand-over to it and to a batch task.
        """
        if self._queue or self._closed or not self._idle_workers:
            return None
        index = next((i for i in self._idle_workers if accept(i)), None)
        if index is None or (self.config.max_queue_delay_ms > 0 and not self._skips_wait()):
            return None
        return index

    def _skips_wait(self) -> bool:
        """The adaptive delay's decision for a lone request, taken once: a probe is granted to the fill."""
        if not self.config.adaptive_delay or self._wait_payoff >= MIN_PAYOFF:
            return False
        if self._probe_due():
            self._probe_granted = True
            return False
        return True

    def _probe_due(self) -> bool:
        """Count one decision to skip the wait; True when this one waits anyway, as a probe."""
        self._until_probe -= 1
        if self._until_probe > 0:
            return False
        self._probing = True
        return True

    async def _fill(self, taken: list[PendingRequest]) -> None:
        """Add stackable requests to `taken` until it is full or the first one's delay is over."""
        first = taken[0]
        rows, limit = first.rows, self.config.max_batch_size
        # Triton counts the delay from the first request's arrival; after a busy spell that has long
        # passed, and the batch would leave half full while the last batch's clients are on their way back.
        opened = max(first.enqueued, time.perf_counter()) if self.config.wait_after_busy else first.enqueued
        deadline = opened + self.config.max_queue_delay_ms / 1000
        waited = paid_off = False
        while rows < limit:
            more = self._take(first.key, limit - rows)
            if more is not None:
                taken.append(more)
                rows += more.rows
                paid_off = paid_off or waited  # only requests that came during the wait count
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
            self._wait_payoff = (1 - PAYOFF_WEIGHT) * self._wait_payoff + PAYOFF_WEIGHT * paid_off
            if self._probing:
                self._probing = False
                self._probe_every = PROBE_EVERY if paid_off else min(2 * self._probe_every, MAX_PROBE_EVERY)
                self._until_probe = self._probe_every

    def _worth_waiting(self) -> bool:
        """Wait for more requests only while waiting has recently paid off.

        At low concurrency a lone request would otherwise pay the full delay for nothing.
        """
        if not self.config.adaptive_delay or self._probe_granted:
            self._probe_granted = False
            return True
        return self._wait_payoff >= MIN_PAYOFF or self._probe_due()

    async def _worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = [await self._take_first(index)]
            self._running += 1  # a filling batch counts as running, so drain_and_stop waits for it
            try:
                await self._fill(taken)
            except asyncio.CancelledError:
                # Only drain_and_stop cancels a filling worker, once its deadline has passed.
                Batch(taken).fail(ModelNotReady(UNLOADING))
                self._batch_done()
                raise
            batch = self._runnable(taken)
            if not batch.requests:
                self._batch_done()
                continue
            freed = loop.create_future()
            release = partial(_settle, freed)
            try:
                answering: Awaitable[None] = self._run_batch(index, batch, release)
            except Exception as exc:  # failed through _run's last resort, like a raise while answering
                answering = loop.create_future()
                answering.set_exception(exc)
            task = asyncio.create_task(self._run(index, batch, answering, release), name=f"hotswap-batch-{index}")
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
            # Not shielded: the worker's turn then comes right after release(), ahead of the answers;
            # a drain that cancels this worker cancels only `freed`, and the batch still finishes.
            await freed
            if self._queue:
                self._arrived.set()  # another worker may be waiting on requests left behind

    @staticmethod
    def _runnable(taken: list[PendingRequest]) -> Batch:
        """The batch of `taken` that runs: requests that expired or were cancelled while it filled never do."""
        now = time.perf_counter()
        for request in taken:
            if request.timer is not None:
                request.timer.cancel()
        batch = Batch([request for request in taken if request.live])
        for request in batch.requests:
            request.started = now
        return batch

    async def _run(self, index: int, batch: Batch, answering: Awaitable[None], release: Release) -> None:
        try:
            await answering
        except Exception as exc:  # run_batch answers its requests itself; this is a last resort
            # Logged, not only set: after the batch was answered (an error in an on_batch consumer,
            # such as the supervisor) no request is left to carry it.
            log.error("batch of %d requests on worker %d: unexpected error", len(batch.requests), index,
                      exc_info=exc)
            batch.fail(exc)
        finally:
            release()
            self._batch_done()

    def _batch_done(self) -> None:
        self._running -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._queue and self._running == 0:
            self._idle.set()

    async def drain_and_stop(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, let queued and running ones finish, then stop the workers.

        With `timeout_s`, once it passes every request that has not started (queued, or in a
        filling batch) fails with ModelNotReady (503) and this returns; running batches are
        left to finish on their own and still answer their requests.
        """
        self._closed = True
        self._check_idle()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            abandoned, self._queue = list(self._queue), {}
            for request in abandoned:
                if request.timer is not None:
                    request.timer.cancel()
            Batch(abandoned).fail(ModelNotReady(UNLOADING))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(freed: asyncio.Future[None]) -> None:
    """Wake the worker waiting on `freed`; a no-op once done (released twice, or the worker was cancelled)."""
    if not freed.done():
        freed.set_result(None)
