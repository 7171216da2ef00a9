"""server.gc (hotswap/serve/memory.py settle_gc): the collector as it serves, and as it was again after."""

from __future__ import annotations

import gc

from starlette.testclient import TestClient

from hotswap.config import HotswapConfig, parse_config
from hotswap.serve.app import create_app
from hotswap.serve.memory import settle_gc
from hotswap.server_config import GcConfig


def _collectable(obj: object) -> bool:
    """Whether the collector still walks `obj` (a frozen object is in no generation it collects)."""
    return any(o is obj for o in gc.get_objects())


def test_the_objects_alive_are_frozen_and_the_young_threshold_raised_until_restored():
    before = gc.get_threshold()
    alive = [object()]  # a container, so the collector tracks it
    restore = settle_gc(GcConfig(young_threshold=12_345))
    try:
        assert gc.get_threshold() == (12_345, *before[1:])
        assert not _collectable(alive), "an object alive after the load was not frozen"
        later = [object()]
        assert _collectable(later), "only what was alive then is frozen"
    finally:
        restore()
    assert gc.get_threshold() == before
    assert _collectable(alive), "after the restore a frozen object is collectable again"


def test_the_older_generations_thresholds_are_kept_as_they_were():
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 13)  # distinct, so a shifted pair would show
    try:
        restore = settle_gc(GcConfig(freeze_after_load=False, young_threshold=3_000))
        assert gc.get_threshold() == (3_000, 11, 13)
        restore()
        assert gc.get_threshold() == (700, 11, 13)
    finally:
        gc.set_threshold(*before)


def test_without_freeze_after_load_only_the_threshold_changes():
    before = gc.get_threshold()
    alive = [object()]
    restore = settle_gc(GcConfig(freeze_after_load=False, young_threshold=2_000))
    try:
        assert gc.get_threshold()[0] == 2_000 and _collectable(alive)
    finally:
        restore()
    assert gc.get_threshold() == before


def test_the_server_settles_the_collector_while_it_serves_and_restores_it_at_shutdown():
    before = gc.get_threshold()
    config = parse_config({"server": {"gc": {"young_threshold": 4_321}}, "models": []}, "test")
    with TestClient(create_app(config), base_url="http://127.0.0.1") as client:
        assert client.get("/v2/health/live").status_code == 200
        assert gc.get_threshold()[0] == 4_321
    assert gc.get_threshold() == before
    assert HotswapConfig().server.gc.young_threshold == 10_000 and HotswapConfig().server.gc.freeze_after_load
