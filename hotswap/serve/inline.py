"""Where a batch's backend call runs: the instance's own thread, or inline on the event loop's.

Handing a batch to the instance's thread and the answer back costs two thread wake-ups (a futex
one way, an eventfd and an epoll wake the other); on a small VM that is a few hundred
microseconds, more than a tiny model's whole call. A call that has recently taken less than
`batching.inline_max_us` therefore runs inline, blocking the loop for less than the hop would
cost; one that grows past it goes back to its thread. Only backends that declare `inline_safe`
(no per-thread state) are ever run inline, and never with a failover batch timeout (a hung call
must be abandonable, which needs its own thread).
"""

from __future__ import annotations

import math

from hotswap.models.pipeline import StageTimes

#: Weight of the latest call in the running average of call times.
LATEST_WEIGHT = 0.2
#: A call on the instance's thread is timed with the waits for the GIL it met there: under load the
#: loop's thread holds the GIL, so a call that takes 60 µs inline measured 300 µs to 1.5 ms on its
#: thread and never came back. An instance off the loop whose calls use little CPU on their thread
#: (under PROBE_BELOW times the bound) therefore runs one call inline as a probe, after PROBE_EVERY
#: calls, and that call's time replaces the average. A probe slow inline too (a device's wait, which
#: costs no CPU) doubles the interval to the next, up to MAX_PROBE_EVERY; a fast one resets it.
PROBE_EVERY = 32
MAX_PROBE_EVERY = 1024
PROBE_BELOW = 4.0


class InlinePolicy:
    """Running averages of each instance's call time and thread CPU time, and the inline decision they imply."""

    __slots__ = ("_max_s", "_call_s", "_cpu_s", "_until_probe", "_probe_every")

    def __init__(self, max_us: int, instances: int, allowed: bool) -> None:
        self._max_s = max_us / 1e6 if allowed else 0.0
        # Unknown until measured on the instance's thread: the first call never runs inline.
        self._call_s = [math.inf] * instances
        self._cpu_s = [math.inf] * instances
        self._probe_every = [PROBE_EVERY] * instances
        self._until_probe = [PROBE_EVERY] * instances

    def inline(self, index: int) -> bool:
        """Instance `index`'s calls run on the event loop's thread now."""
        return self._call_s[index] < self._max_s

    def decide(self, index: int) -> bool:
        """Run instance `index`'s next call inline: `inline(index)`, or a periodic probe (see PROBE_EVERY)."""
        if self.inline(index):
            return True
        if self._cpu_s[index] >= PROBE_BELOW * self._max_s:  # never measured, or plainly slow
            return False
        self._until_probe[index] -= 1
        return self._until_probe[index] <= 0

    def observe(self, index: int, times: StageTimes, ran_inline: bool) -> None:
        """Record one call's duration (pre-processing, backend, post-processing) and its thread's CPU time."""
        took = times.preprocess_s + times.infer_s + times.postprocess_s
        previous = self._call_s[index]
        cpu = took if times.cpu_s is None else times.cpu_s
        self._cpu_s[index] = cpu if self._cpu_s[index] == math.inf else \
            self._cpu_s[index] + LATEST_WEIGHT * (cpu - self._cpu_s[index])
        if previous == math.inf or (ran_inline and previous >= self._max_s):  # the first call, or a probe
            self._call_s[index] = took
            if previous != math.inf:
                self._after_probe(index, took < self._max_s)
        else:
            self._call_s[index] = previous + LATEST_WEIGHT * (took - previous)

    def _after_probe(self, index: int, fast: bool) -> None:
        every = PROBE_EVERY if fast else min(2 * self._probe_every[index], MAX_PROBE_EVERY)
        self._probe_every[index] = self._until_probe[index] = every
