"""One runner's metric series (`ModelSeries`), in-process on a real prometheus_client registry: what
`publish_backend` shows of the backend and the chain entries skipped, how `retire` hands shared
children over to the runner that replaced it, the pending gauge read from waiting sets, the device
memory sampled per scrape under `--workers`, and how `outcome` counts each request."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import Gauge

from hotswap.backends.selection import SkippedEntry
from hotswap.errors import QueueFull
from hotswap.serve.metrics import MULTIPROC_ENV, Metrics, ModelSeries

LABELS = {"model": "m", "version": "7", "backend": "onnxruntime", "device": "cpu"}
INFO = {"providers": "CPUExecutionProvider", "precision": "fp32", "runtime": "onnxruntime 1.32.0"}


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def child_value(gauge: Gauge) -> float:
    # The child's own value: under --workers a scrape reads the shared folder's files, which this
    # process does not write (prometheus_client picked its in-memory values at import).
    return gauge.labels(*LABELS.values())._value.get()


def published(metrics: Metrics, info: dict, skipped: list, memory=lambda: None) -> ModelSeries:
    series = metrics.model_series(LABELS)
    series.publish_backend(info, 1, skipped, memory)
    return series


def test_publish_backend_shows_what_runs_and_each_entry_skipped_with_its_reason():
    metrics = Metrics()
    skipped = [SkippedEntry(0, "onnxruntime[cuda]", "no CUDAExecutionProvider " + "x" * 300)]
    published(metrics, INFO, skipped)
    assert sample(metrics, "hotswap_backend_info", **LABELS, **INFO) == 1
    assert sample(metrics, "hotswap_backend_selected", **LABELS, position="1") == 1
    reason = skipped[0].reason[:200]
    assert sample(metrics, "hotswap_backend_skipped", model="m", version="7", position="0",
                  backend="onnxruntime[cuda]", reason=reason) == 1
    assert sample(metrics, "hotswap_device_memory_bytes", **LABELS) == 0, "no memory reading is 0, not 1"


def test_a_backend_describing_nothing_shows_empty_labels():
    metrics = Metrics()
    published(metrics, {}, [])
    assert sample(metrics, "hotswap_backend_info", **LABELS, providers="", precision="", runtime="") == 1


def test_a_retired_series_leaves_children_a_newer_runner_holds_and_clears_them_after_it():
    metrics = Metrics()
    old, new = published(metrics, INFO, []), published(metrics, INFO, [])  # a reload onto the same labels
    old.retire()
    assert sample(metrics, "hotswap_backend_selected", **LABELS, position="1") == 1, "the new runner holds it"
    new.retire()
    new.retire()  # twice: nothing left to hand back
    assert sample(metrics, "hotswap_backend_selected", **LABELS, position="1") == 0
    assert sample(metrics, "hotswap_backend_info", **LABELS, **INFO) == 0


def test_the_pending_gauge_counts_every_live_runners_waiting_set_until_it_retires():
    metrics = Metrics()
    old, new = metrics.model_series(LABELS), metrics.model_series(LABELS)
    old.count_pending({"a", "b"})
    new.count_pending({"c"})
    assert sample(metrics, "hotswap_pending_requests", **LABELS) == 3
    old.retire()
    old.retire()
    assert sample(metrics, "hotswap_pending_requests", **LABELS) == 1


def test_a_series_without_a_waiting_set_counts_its_queued_requests_and_one_with_it_does_not():
    metrics = Metrics()
    counting = metrics.model_series(LABELS)
    counting.queued()
    counting.queued()
    counting.answered()
    assert sample(metrics, "hotswap_pending_requests", **LABELS) == 1
    reading = metrics.model_series({**LABELS, "version": "8"})
    reading.count_pending({"a", "b"})
    reading.queued()  # already in its waiting set: counting it too would show it twice
    assert sample(metrics, "hotswap_pending_requests", **LABELS | {"version": "8"}) == 2


def test_under_workers_device_memory_is_sampled_at_publish_and_each_scrape_until_retired(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics = Metrics()
    assert metrics.workers is not None
    reading: list = [1234]

    def memory():
        if reading[0] == "closed":
            raise RuntimeError("backend closed")
        return reading[0]

    series = published(metrics, INFO, [], memory)
    assert child_value(metrics.device_memory) == 1234, "sampled at publish"
    refreshers = list(metrics.workers.refreshers)
    assert len(refreshers) == 1 and callable(refreshers[0])
    for value, want in ((2048, 2048), (None, 0), ("closed", 0)):
        reading[0] = value
        refreshers[0]()
        assert child_value(metrics.device_memory) == want, value
    series.retire()
    assert metrics.workers.refreshers == []


@pytest.mark.parametrize(("exc", "reason"), [
    (QueueFull("full"), "queue_full"), (asyncio.CancelledError(), "cancelled"), (GeneratorExit(), "cancelled"),
    (ValueError("bug"), "internal_error")])
def test_outcome_counts_a_failure_under_its_reason(exc, reason):
    metrics = Metrics()
    metrics.model_series(LABELS).outcome(exc, time.perf_counter())
    assert sample(metrics, "hotswap_request_failure_total", **LABELS, reason=reason) == 1
    assert sample(metrics, "hotswap_request_success_total", **LABELS) == 0


def test_outcome_counts_a_success_and_its_time_since_the_start():
    metrics = Metrics()
    metrics.model_series(LABELS).outcome(None, time.perf_counter() - 0.25)
    assert sample(metrics, "hotswap_request_success_total", **LABELS) == 1
    took = sample(metrics, "hotswap_request_duration_seconds_sum", **LABELS)
    assert took is not None and 0.25 <= took < 5
