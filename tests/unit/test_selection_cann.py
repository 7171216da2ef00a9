"""Ascend (CANN) provider options on onnxruntime entries: parsed with their types kept, read from a config,
passed to onnxruntime as strings through a faked InferenceSession, refused when the provider does not activate,
and, on this machine without CANN, skipped in a chain with a reason."""

from __future__ import annotations

from types import SimpleNamespace

import onnxruntime
import pytest

from hotswap.backends.onnxruntime_backend import ExecutionProvider, OnnxRuntimeBackend
from hotswap.backends.selection import select_backend
from hotswap.config import parse_config
from hotswap.errors import BackendUnavailable
from hotswap.models.sources import ModelSource
from tests.unit.selection_support import ORT_CPU, REGISTRY, model

CANN_OPTIONS = {"device_id": 0, "precision_mode": "must_keep_origin_dtype", "npu_mem_limit": 8589934592,
                "enable_cann_graph": False}


def test_cann_options_parse():
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": CANN_OPTIONS},
                                                    "CPUExecutionProvider"])
    cann = options.providers[0]
    assert cann.name == "CANNExecutionProvider"
    assert cann.options == CANN_OPTIONS
    # Types survive validation (no bool -> int or int -> float coercion).
    assert type(cann.options["device_id"]) is int
    assert type(cann.options["npu_mem_limit"]) is int
    assert type(cann.options["enable_cann_graph"]) is bool
    assert options.providers[1] == ExecutionProvider(name="CPUExecutionProvider")


def test_cann_options_from_yaml_config():
    config = parse_config({"models": [{"name": "m", "source": "m.onnx", "backends": [
        {"name": "onnxruntime", "providers": [{"name": "CANNExecutionProvider", "options": CANN_OPTIONS}]},
        ORT_CPU]}]}, "test.yaml", REGISTRY)
    entry = config.models[0].backends[0]
    assert entry.label() == "onnxruntime[CANNExecutionProvider]"
    options = OnnxRuntimeBackend.Options.model_validate(entry.options)
    assert options.providers[0].options == CANN_OPTIONS


def test_cann_probe_reason_here():
    if "CANNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CANN here")
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": CANN_OPTIONS}])
    reason = OnnxRuntimeBackend.probe(options)
    assert "has no CANNExecutionProvider" in reason


class FakeSession:
    """Stands in for onnxruntime.InferenceSession and records what load() passed."""

    created: list[dict] = []
    active: list[str] = []

    def __init__(self, path, sess_options=None, providers=None, **kwargs):
        FakeSession.created.append({"path": path, "sess_options": sess_options, "providers": providers,
                                    "kwargs": kwargs})
        self._providers = providers
        self.fallback_disabled = False

    def disable_fallback(self):
        self.fallback_disabled = True

    def get_providers(self):
        return list(FakeSession.active)

    def get_provider_options(self):
        return {name: {k: v for k, v in opts.items()} for name, opts in self._providers if name in FakeSession.active}

    def get_inputs(self):
        return [SimpleNamespace(name="x", type="tensor(float)", shape=["batch", 8])]

    def get_outputs(self):
        return [SimpleNamespace(name="y", type="tensor(float)", shape=["batch", 4]),
                SimpleNamespace(name="z", type="tensor(float)", shape=["batch", 1])]


@pytest.fixture
def fake_cann(monkeypatch):
    available = ["CANNExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    FakeSession.created = []
    FakeSession.active = list(available)
    return FakeSession


def test_cann_provider_options_reach_onnxruntime_as_strings(fake_cann, tiny):
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": CANN_OPTIONS},
                                                    "CPUExecutionProvider"])
    backend = OnnxRuntimeBackend()
    signature = backend.load(tiny.onnx, options)
    (created,) = fake_cann.created
    assert created["path"] == str(tiny.onnx)
    # What onnxruntime's own Python wrapper would do: every provider option as a str.
    assert created["providers"] == [
        ("CANNExecutionProvider", {"device_id": "0", "precision_mode": "must_keep_origin_dtype",
                                   "npu_mem_limit": "8589934592", "enable_cann_graph": "False"}),
        ("CPUExecutionProvider", {}),
    ]
    assert created["kwargs"].get("enable_fallback") == 0
    assert created_fallback_entry(created) is None
    assert signature.inputs[0].shape == (-1, 8)
    info = backend.describe()
    assert info["device"] == "cann:0"
    assert info["providers"] == "CANNExecutionProvider,CPUExecutionProvider"
    backend.close()


def test_provider_not_activated_is_refused(fake_cann, tiny):
    """onnxruntime only warns when a requested provider does not activate: load must fail."""
    fake_cann.active = ["CPUExecutionProvider"]
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": {"device_id": 1}}])
    with pytest.raises(BackendUnavailable) as info:
        OnnxRuntimeBackend().load(tiny.onnx, options)
    message = str(info.value)
    assert "onnxruntime did not activate CANNExecutionProvider (active: CPUExecutionProvider)" in message
    assert "refusing to run on another device" in message


def test_cann_chain_falls_back_to_cpu_with_a_reason(tiny):
    if "CANNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CANN here")
    cann = {"name": "onnxruntime", "providers": [{"name": "CANNExecutionProvider", "options": CANN_OPTIONS}]}
    selection, backend = select_backend(model(tiny.onnx, cann, ORT_CPU), ModelSource([tiny.onnx]), REGISTRY)
    backend.close()
    assert selection.position == 1
    assert selection.skipped[0].label == "onnxruntime[CANNExecutionProvider]"
    assert "CANNExecutionProvider" in selection.skipped[0].reason


def created_fallback_entry(created: dict) -> str | None:
    try:
        return created["sess_options"].get_session_config_entry("session.disable_cpu_ep_fallback")
    except RuntimeError:  # "SessionOptions does not have configuration with key"
        return None


def test_strict_disables_cpu_fallback_unless_cpu_is_requested(fake_cann, tiny):
    cann = {"name": "CANNExecutionProvider", "options": {"device_id": 0}}
    fake_cann.active = ["CANNExecutionProvider"]
    OnnxRuntimeBackend().load(tiny.onnx, OnnxRuntimeBackend.Options(providers=[cann], strict=True))
    assert created_fallback_entry(fake_cann.created[-1]) == "1"

    # onnxruntime rejects CPUExecutionProvider together with disable_cpu_ep_fallback.
    fake_cann.active = ["CANNExecutionProvider", "CPUExecutionProvider"]
    OnnxRuntimeBackend().load(tiny.onnx, OnnxRuntimeBackend.Options(providers=[cann, "CPUExecutionProvider"],
                                                                    strict=True))
    assert created_fallback_entry(fake_cann.created[-1]) is None

    OnnxRuntimeBackend().load(tiny.onnx, OnnxRuntimeBackend.Options(providers=[cann]))
    assert created_fallback_entry(fake_cann.created[-1]) is None
