"""`server.workers`, the default config of `hotswap serve` without --config, the image configs,
and the single-worker metrics path."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from hotswap.config import DEFAULT_CONFIG, load_config, parse_config
from hotswap.errors import ConfigError
from hotswap.serve.metrics import Metrics
from hotswap.server_config import MAX_WORKERS

REPO = Path(__file__).resolve().parents[2]


def test_default_config_is_examples_default_yaml():
    assert parse_config(DEFAULT_CONFIG).model_dump() == load_config(REPO / "examples/default.yaml").model_dump()


@pytest.mark.parametrize("workers", [0, MAX_WORKERS + 1, -1])
def test_workers_out_of_bounds_name_the_key(workers):
    with pytest.raises(ConfigError, match=r"server\.workers"):
        parse_config({"server": {"workers": workers}})


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("HOTSWAP_SERVER__WORKERS", str(MAX_WORKERS))
    assert parse_config({}).server.workers == MAX_WORKERS


def test_several_workers_refuse_live_swap():
    assert parse_config({"server": {"workers": 2}}).server.model_control == "none"
    assert parse_config({"server": {"workers": 1, "model_control": "explicit"}}).server.workers == 1
    with pytest.raises(ConfigError, match=r"model_control: explicit needs workers: 1 \(got workers: 3\)"):
        parse_config({"server": {"workers": 3, "model_control": "explicit"}})


@pytest.mark.parametrize("name", ["config.yaml", "config-cuda.yaml", "config-ascend.yaml"])
def test_image_configs_need_a_token_on_all_interfaces(name):
    config = load_config(REPO / "docker" / name)
    assert config.server.host == "0.0.0.0" and config.server.port == 8000
    assert [(t.scope, t.env) for t in config.server.auth.tokens] == [("infer", "HOTSWAP_INFER_TOKEN")]
    assert not config.server.auth.allow_anonymous
    assert [m.source for m in config.models] == ["builtin:minilm"]


def test_image_anonymous_opt_out_by_environment(monkeypatch):
    """The two variables docs/DEPLOY.md gives must really clear the image's token and allow anonymity."""
    monkeypatch.setenv("HOTSWAP_SERVER__AUTH__TOKENS", "[]")
    monkeypatch.setenv("HOTSWAP_SERVER__AUTH__ALLOW_ANONYMOUS", "true")
    auth = load_config(REPO / "docker/config.yaml").server.auth
    assert auth.tokens == [] and auth.allow_anonymous


def test_one_worker_keeps_metrics_in_memory(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    assert metrics.workers is None and metrics.serving_workers is None
    assert type(metrics.registry) is CollectorRegistry
    series = metrics.model_series({"model": "m", "version": "1", "backend": "b", "device": "cpu"})
    series.publish_backend({}, 0, [], lambda: 1234)
    assert metrics.registry.get_sample_value("hotswap_device_memory_bytes", {
        "model": "m", "version": "1", "backend": "b", "device": "cpu"}) == 1234
