"""Per-request metrics tallied in plain Python (serve/tally.py) and folded into prometheus_client at each scrape:
the scraped samples equal those of children updated directly, no update is counted twice or lost, and a retired
series' late requests still count."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from hotswap.serve.metrics import LATENCY_BUCKETS, MULTIPROC_ENV, Metrics
from hotswap.serve.tally import LocalCounter, LocalHistogram, TallyFlusher

LABELS = {"model": "m", "version": "7", "backend": "onnxruntime", "device": "cpu"}
# On a bound, between bounds, below the first, past the last (+Inf), and zero.
AMOUNTS = [0.0005, 0.0007, 0.001, 0.0001, 31.0, 0.0, 2.0, 2.0000001]


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def samples(registry: CollectorRegistry, family: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() if metric.name == family for s in metric.samples
            if not s.name.endswith("_created")}


def test_a_tallied_histogram_scrapes_as_one_observed_directly():
    registry = CollectorRegistry()
    flusher = TallyFlusher()
    registry.register(flusher)
    tallied = Histogram("tallied", "t", buckets=LATENCY_BUCKETS, registry=registry)
    direct = Histogram("direct", "d", buckets=LATENCY_BUCKETS, registry=registry)
    local = LocalHistogram(tallied)  # type: ignore[arg-type]
    flusher.tallies.append(local)
    for amount in AMOUNTS:
        local.observe(amount)
        direct.observe(amount)
    assert samples(registry, "tallied") == {(n.replace("direct", "tallied"), k): v
                                            for (n, k), v in samples(registry, "direct").items()}
    assert samples(registry, "tallied")[("tallied_count", ())] == len(AMOUNTS)
    assert samples(registry, "tallied") == samples(registry, "tallied")  # a second scrape adds nothing
    local.observe(0.003)
    after = samples(registry, "tallied")
    assert after[("tallied_bucket", (("le", "0.005"),))] == 6  # five before it, cumulative
    assert after[("tallied_sum", ())] == pytest.approx(sum(AMOUNTS) + 0.003, abs=1e-12)


def test_a_tallied_counter_adds_what_was_counted_once():
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    local = LocalCounter(counter)  # type: ignore[arg-type]
    local.inc()
    local.inc(2.5)
    assert registry.get_sample_value("c_total") == 0  # nothing flushed yet
    local.flush()
    local.flush()
    assert registry.get_sample_value("c_total") == 3.5


def test_a_scrape_shows_each_request_at_once_and_a_retired_series_still_counts():
    metrics = Metrics()
    series = metrics.model_series(LABELS)
    series.outcome(None, 0.0)  # a request that took "since boot": it lands in +Inf
    series.queue_duration.observe(0.0015)
    assert metrics.registry.get_sample_value("hotswap_request_success_total", LABELS) == 1
    assert metrics.registry.get_sample_value("hotswap_request_duration_seconds_count", LABELS) == 1
    assert metrics.registry.get_sample_value("hotswap_queue_duration_seconds_bucket", {**LABELS, "le": "0.002"}) == 1
    series.outcome(None, 0.0)
    series.retire()  # what it counted since the last scrape is folded in now
    assert metrics.flusher is not None and metrics.flusher.tallies == []
    assert metrics.registry.get_sample_value("hotswap_request_success_total", LABELS) == 2
    series.outcome(None, 0.0)  # a request still in flight at the swap finishes on the old series
    assert metrics.registry.get_sample_value("hotswap_request_success_total", LABELS) == 3
    assert metrics.registry.get_sample_value("hotswap_request_duration_seconds_count", LABELS) == 3


def test_forget_keeps_the_other_series_tallies():
    metrics = Metrics()
    first = metrics.model_series(LABELS)
    second = metrics.model_series({**LABELS, "backend": "torch"})
    assert metrics.flusher is not None and len(metrics.flusher.tallies) == 6
    first.retire()
    assert metrics.flusher.tallies == [second.success, second.request_duration, second.queue_duration]
