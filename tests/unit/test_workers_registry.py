"""`WorkersRegistry`, the registry of one worker under `--workers N`: each scrape reads every worker's
values from the shared multiprocess folder, after refreshing what this worker can only sample.
The values here are written to that folder as a worker writes them (prometheus_client's mmap files);
the worker processes themselves are tested in tests/workers."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import values

from hotswap.serve.metrics import MULTIPROC_ENV, WorkersRegistry


def _write_counter(folder: Path, pid: int, amount: float) -> None:
    """Count `amount` on hotswap_demo{model="tiny"} as worker `pid` would."""
    value_class = values.MultiProcessValue(lambda: pid)
    value = value_class("counter", "hotswap_demo", "hotswap_demo_total", ("model",), ("tiny",), "demo")
    value.inc(amount)


def test_a_scrape_sums_every_workers_values_after_refreshing_its_own(tmp_path: Path, monkeypatch) -> None:
    shared = tmp_path / "workers"
    shared.mkdir()
    monkeypatch.setenv(MULTIPROC_ENV, str(shared))
    _write_counter(shared, 101, 2.0)
    _write_counter(shared, 102, 3.0)
    # The registry reads the folder it was given, not whatever the environment says at scrape time.
    monkeypatch.delenv(MULTIPROC_ENV)
    registry = WorkersRegistry(str(shared))
    refreshed: list[int] = []
    registry.refreshers.append(lambda: refreshed.append(len(refreshed)))

    first = {s.name: s.value for family in registry.collect() for s in family.samples}
    second = {s.name: s.value for family in registry.collect() for s in family.samples}

    assert first == second == {"hotswap_demo_total": 5.0}
    assert refreshed == [0, 1], "each scrape refreshes first"
    assert registry.path == str(shared)


def test_an_empty_folder_scrapes_to_nothing(tmp_path: Path) -> None:
    registry = WorkersRegistry(str(tmp_path))
    assert list(registry.collect()) == [] and registry.refreshers == []
