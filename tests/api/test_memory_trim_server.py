"""`server.memory_trim` is wired into the server's lifespan: an idle server trims its heap and
counts it on /metrics; switched off, it never does."""

from __future__ import annotations

import time

import pytest
from api_support import running_server, server_section

from hotswap.config import parse_config
from hotswap.serve.app import create_app
from hotswap.serve.memory import glibc_trim

pytestmark = pytest.mark.skipif(glibc_trim() is None, reason="this C library has no malloc_trim")


def trims_after_idle(registry, model_configs, tmp_path_factory, memory_trim: dict) -> float:
    server = {**server_section(tmp_path_factory), "memory_trim": memory_trim}
    config = parse_config({"server": server, "models": [model_configs["tiny"]]}, "test", registry)
    with running_server(create_app(config, registry)) as live:
        time.sleep(0.5)
        samples = live.metrics()
    return samples[("hotswap_memory_trims_total", frozenset())]


def test_an_idle_server_trims_and_counts_it(registry, model_configs, tmp_path_factory) -> None:
    # min_growth_mib 0: every idle interval trims, so the count cannot depend on this process's heap.
    assert trims_after_idle(registry, model_configs, tmp_path_factory, {"idle_s": 0.05, "min_growth_mib": 0}) >= 1


def test_switched_off_the_server_never_trims(registry, model_configs, tmp_path_factory) -> None:
    off = {"enabled": False, "idle_s": 0.05, "min_growth_mib": 0}
    assert trims_after_idle(registry, model_configs, tmp_path_factory, off) == 0
