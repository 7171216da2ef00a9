"""The `failover:` and `shadow:` sections: off by default, bounded, validated like the chain."""

from __future__ import annotations

import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.config import parse_config
from hotswap.errors import ConfigError

REGISTRY = BackendRegistry(available={"onnxruntime": OnnxRuntimeBackend})


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("HOTSWAP_MODELS"):
            monkeypatch.delenv(key)


def model(**sections) -> dict:
    return {"models": [{"name": "m", "source": "m.onnx", "backends": [{"name": "onnxruntime"}], **sections}]}


def test_both_are_off_unless_configured_and_have_safe_defaults():
    cfg = parse_config(model()).models[0]
    assert cfg.failover is None and cfg.shadow is None
    cfg = parse_config(model(failover={}, shadow={"backend": {"name": "onnxruntime"}})).models[0]
    assert cfg.failover is not None and cfg.shadow is not None
    assert (cfg.failover.after_errors, cfg.failover.retry, cfg.failover.standby) == (3, True, False)
    assert cfg.failover.batch_timeout_ms is None and cfg.failover.retry_primary_after_s is None
    assert (cfg.shadow.sample, cfg.shadow.max_queue) == (0.05, 16)


@pytest.mark.parametrize(("section", "bad"), [
    ("failover", {"after_errors": 0}), ("failover", {"after_errors": 1001}),
    ("failover", {"batch_timeout_ms": 0}), ("failover", {"batch_timeout_ms": 600_001}),
    ("failover", {"retry_primary_after_s": 86_401}), ("failover", {"parity_min_cosine": 1.5}),
    ("failover", {"unknown": 1}),
    ("shadow", {"sample": 0}), ("shadow", {"sample": 1.01}), ("shadow", {"max_queue": 4097}),
    ("shadow", {"max_queue": 0}), ("shadow", {"atol": -1}), ("shadow", {"unknown": 1}),
])
def test_every_knob_is_bounded_and_unknown_keys_are_errors(section, bad):
    body = bad if section == "failover" else {"backend": {"name": "onnxruntime"}, **bad}
    with pytest.raises(ConfigError, match=f"models.0.{section}.{next(iter(bad))}"):
        parse_config(model(**{section: body}), "test.yaml")


def test_the_shadow_entry_options_are_checked_against_its_backend():
    with pytest.raises(ConfigError, match=r"models\.0\.shadow\.backend\.bogus"):
        parse_config(model(shadow={"backend": {"name": "onnxruntime", "bogus": 1}}), "test.yaml", REGISTRY)
