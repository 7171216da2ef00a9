"""Ascend paths without Ascend hardware: configs, device strings, provider options, probe reasons."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import discover_backends
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_ascend_example_config_parses_to_npu_device_and_cann_provider():
    registry = discover_backends()
    config = load_config(REPO / "examples" / "ascend.yaml", registry)
    chain = config.models[0].backends
    torch_options = TorchBackend.Options.model_validate(chain[0].options)
    assert (chain[0].name, torch_options.device, torch_options.dtype) == ("torch", "npu:0", "float16")
    assert chain[0].label() == "torch[npu:0]"
    ort_options = OnnxRuntimeBackend.Options.model_validate(chain[1].options)
    [cann] = ort_options.providers
    assert cann.name == "CANNExecutionProvider" and ort_options.strict
    assert cann.options == {"device_id": 0, "precision_mode": "must_keep_origin_dtype",
                            "npu_mem_limit": 8589934592, "enable_cann_graph": False}
    assert chain[1].label() == "onnxruntime[CANNExecutionProvider]"


def test_cann_provider_missing_gives_a_probe_reason():
    options = OnnxRuntimeBackend.Options(providers=["CANNExecutionProvider"])
    reason = OnnxRuntimeBackend.probe(options)
    assert reason is not None and "has no CANNExecutionProvider" in reason


@pytest.fixture
def fake_torch_npu(tmp_path, monkeypatch):
    """A stand-in torch_npu that exits at import, as the real one does without CANN."""
    package = tmp_path / "torch_npu"
    package.mkdir()
    (package / "__init__.py").write_text("import sys\nsys.exit(1)  # libascendcl.so not found\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    return package


def test_torch_npu_exiting_at_import_becomes_a_probe_reason(fake_torch_npu):
    reason = TorchBackend.probe(TorchBackend.Options(device="npu:0"))
    assert reason.startswith("importing torch_npu called sys.exit(1)")
    assert "CANN" in reason


def test_torch_npu_raising_at_import_becomes_a_probe_reason(fake_torch_npu):
    (fake_torch_npu / "__init__.py").write_text("raise OSError('libhccl.so: cannot open shared object file')\n")
    reason = TorchBackend.probe(TorchBackend.Options(device="npu:1"))
    assert "importing torch_npu failed: OSError: libhccl.so" in reason
