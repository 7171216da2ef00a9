"""Per-request metrics kept in plain Python on the event loop's thread, folded into Prometheus at each scrape.

A prometheus_client child takes a lock on every update and a histogram walks its buckets one by
one: for a small inference the success counter and the request and queue histograms cost about
2 µs a request, a few per cent of the whole request path. Here an update is an integer addition
(a bisection for a histogram); `TallyFlusher`, registered on the registry before every family,
adds what was counted to the children when a scrape collects, so every scrape reads exact values.

Only for the in-process registry: under `--workers N` a scrape reads every worker's files, which
another worker's tallies would not have reached, so there the children are updated directly.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class LocalCounter:
    """`inc()` of one Counter child, counted here until `flush()`."""

    __slots__ = ("_child", "_count")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._count = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._count += amount

    def flush(self) -> None:
        count, self._count = self._count, 0.0
        if count:
            self._child.inc(count)


class LocalHistogram:
    """`observe()` of one Histogram child: each bucket's count and the sum here until `flush()`."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        # prometheus_client's own bounds, +Inf last; an amount belongs to the first bound >= it.
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        if any(counts):
            self._child._sum.inc(total)
            for bucket, count in zip(self._child._buckets, counts):
                if count:
                    bucket.inc(count)


class TallyFlusher(Collector):
    """A collector that yields nothing: collecting it folds every live tally into its child.
    Registered first, so a scrape (or any collect of the registry) runs it before the families."""

    def __init__(self) -> None:
        self.tallies: list[LocalCounter | LocalHistogram] = []

    def collect(self) -> Iterator[Metric]:
        for tally in self.tallies:
            tally.flush()
        return iter(())

    def forget(self, *tallies: LocalCounter | LocalHistogram) -> None:
        """Flush `tallies` a last time and stop collecting them (their series retired)."""
        for tally in tallies:
            tally.flush()
        self.tallies = [t for t in self.tallies if all(t is not gone for gone in tallies)]
