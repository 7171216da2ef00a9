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


class InlinePolicy:
    """Running average of each instance's call time and the inline decision it implies."""

    __slots__ = ("_max_s", "_call_s")

    def __init__(self, max_us: int, instances: int, allowed: bool) -> None:
        self._max_s = max_us / 1e6 if allowed else 0.0
        # Unknown until measured on the instance's thread: the first call never runs inline.
        self._call_s = [math.inf] * instances

    def inline(self, index: int) -> bool:
        """Run instance `index`'s next call on the event loop's thread."""
        return self._call_s[index] < self._max_s

    def observe(self, index: int, times: StageTimes) -> None:
        """Record one call's duration (pre-processing, backend, post-processing)."""
        took = times.preprocess_s + times.infer_s + times.postprocess_s
        previous = self._call_s[index]
        self._call_s[index] = took if previous == math.inf else previous + LATEST_WEIGHT * (took - previous)
