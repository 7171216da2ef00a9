"""Where `Metrics` registers its families and how its gauges combine under `--workers N`: every
family on the one registry a scrape reads (the app's own, or the one given), the shared-folder
registry and the `hotswap_workers` gauge only when workers share the port. README's table of the
families themselves is checked in test_metrics_reference.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hotswap.serve.metrics import MULTIPROC_ENV, Metrics, WorkersRegistry

# How each gauge's per-worker values combine into one (prometheus_client's multiprocess_mode):
# queued requests and device memory add up; load time, backend and chain entries are the live max.
GAUGE_MODES = {
    "hotswap_pending_requests": "livesum",
    "hotswap_device_memory_bytes": "livesum",
    "hotswap_model_load_seconds": "livemax",
    "hotswap_backend_info": "livemax",
    "hotswap_backend_selected": "livemax",
    "hotswap_backend_skipped": "livemax",
}


def families(metrics: Metrics) -> list[Counter | Gauge | Histogram]:
    return [f for f in vars(metrics).values() if isinstance(f, (Counter, Gauge, Histogram))]


def registered(registry: CollectorRegistry) -> set[str]:
    """The family names registered on `registry` (counters without their `_total`). The base class's
    collect: a `WorkersRegistry`'s own scrape reads the shared folder, not what is registered."""
    return {family.name for family in CollectorRegistry.collect(registry)}


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def test_every_family_is_on_the_registry_a_scrape_reads():
    metrics = Metrics()
    names = {f._name for f in families(metrics)}
    assert len(names) == 25 and "hotswap_failover" in names and "hotswap_memory_trims" in names
    assert registered(metrics.registry) == names
    assert metrics.workers is None and metrics.serving_workers is None


def test_a_given_registry_holds_every_family():
    given = CollectorRegistry()
    metrics = Metrics(registry=given)
    assert metrics.registry is given
    assert registered(given) == {f._name for f in families(metrics)}


def test_each_gauge_says_how_its_workers_values_combine():
    metrics = Metrics()
    modes = {f._name: f._multiprocess_mode for f in families(metrics) if isinstance(f, Gauge)}
    assert modes == GAUGE_MODES


def test_workers_sharing_a_port_scrape_the_shared_folder_and_count_themselves(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics = Metrics()
    assert isinstance(metrics.registry, WorkersRegistry) and metrics.workers is metrics.registry
    assert metrics.registry.path == str(tmp_path)
    workers = metrics.serving_workers
    assert isinstance(workers, Gauge)
    assert (workers._name, workers._documentation, workers._multiprocess_mode) == (
        "hotswap_workers", "Server processes listening on this port (--workers)", "livesum")
    assert workers._labelnames == ()
    assert "hotswap_workers" in registered(metrics.registry)


def test_a_given_registry_is_used_even_under_workers(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    given = CollectorRegistry()
    metrics = Metrics(registry=given)
    assert metrics.registry is given and metrics.workers is None and metrics.serving_workers is None
