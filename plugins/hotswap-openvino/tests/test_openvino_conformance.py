"""The hotswap conformance suite and the OpenVINO backend's own checks, on CPU."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import openvino
import pytest
from hotswap_openvino import backend as ov_backend
from hotswap_openvino.backend import OpenVINOBackend
from pydantic import ValidationError

from hotswap.backends import base as hotswap_base
from hotswap.backends.registry import discover_backends
from hotswap.errors import BackendUnavailable
from hotswap.testing import TINY_SIGNATURE, BackendConformance, ConformanceCase, TinyModels, build_tiny_models

F32 = OpenVINOBackend.Options(device="CPU", precision="f32")


# tests/conftest.py (and its `tiny`) is not visible from the plugin's folder.
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_ir(tiny: TinyModels) -> Path:
    xml = tiny.onnx.with_suffix(".xml")
    # save_model compresses weights to f16 by default, which would cost parity before any device runs.
    openvino.save_model(openvino.Core().read_model(str(tiny.onnx)), str(xml), compress_to_fp16=False)
    return xml


class TestOpenVINOCPU(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(OpenVINOBackend, F32, tiny.onnx, tiny.reference, "cpu")


class TestOpenVINOCPUDeclared(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(OpenVINOBackend, F32, tiny.onnx, tiny.reference, "cpu", declared=TINY_SIGNATURE)


class TestOpenVINOIR(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny_ir, tiny):
        return ConformanceCase(OpenVINOBackend, F32, tiny_ir, tiny.reference, "cpu")


class TestOpenVINOAuto(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        # AUTO on a machine whose only device is the CPU must say so in describe().
        if openvino.Core().available_devices != ["CPU"]:
            pytest.skip("AUTO may pick an accelerator here")
        return ConformanceCase(OpenVINOBackend, OpenVINOBackend.Options(device="AUTO"), tiny.onnx, tiny.reference,
                               "cpu")


@pytest.mark.parametrize("device", ["NPU", "GPU.7"])
def test_probe_names_missing_device(device):
    if device in openvino.Core().available_devices:
        pytest.skip(f"{device} exists here")
    reason = OpenVINOBackend.probe(OpenVINOBackend.Options(device=device))
    assert reason is not None and f"no device {device}" in reason
    assert "available: " in reason and "CPU" in reason


def test_probe_checks_each_device_of_a_virtual_device():
    if any(d.startswith("GPU") for d in openvino.Core().available_devices):
        pytest.skip("a GPU exists here")
    reason = OpenVINOBackend.probe(OpenVINOBackend.Options(device="HETERO:GPU,CPU"))
    assert reason is not None and "no device GPU " in reason
    assert OpenVINOBackend.probe(OpenVINOBackend.Options(device="HETERO:CPU")) is None
    assert OpenVINOBackend.probe(OpenVINOBackend.Options(device="AUTO:-GPU,CPU")) is None


def test_precision_f32_reads_back_f32(tiny):
    backend = OpenVINOBackend()
    backend.load(tiny.onnx, F32)
    try:
        assert backend.describe()["precision"] == "f32"
    finally:
        backend.close()


def test_precision_bf16_reads_back_bf16(tiny):
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        pytest.skip(f"this CPU has no bf16 (OPTIMIZATION_CAPABILITIES: {', '.join(capabilities)}); "
                    "OpenVINO would silently compile f32")
    backend = OpenVINOBackend()
    backend.load(tiny.onnx, OpenVINOBackend.Options(device="CPU", precision="bf16"))
    try:
        assert backend.describe()["precision"] == "bf16"
        x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
        np.testing.assert_allclose(backend.infer({"x": x})["y"], tiny.reference({"x": x})["y"], atol=5e-2)
    finally:
        backend.close()


def test_unknown_option_rejected():
    with pytest.raises(ValidationError, match="not_an_option"):
        OpenVINOBackend.Options.model_validate({"device": "CPU", "not_an_option": 1})
    with pytest.raises(ValidationError, match="set 'precision' instead"):
        OpenVINOBackend.Options(config={"INFERENCE_PRECISION_HINT": "bf16"})
    assert OpenVINOBackend.Options(config={"PERFORMANCE_HINT_NUM_REQUESTS": 4}).config == {
        "PERFORMANCE_HINT_NUM_REQUESTS": "4"}


def test_strict_device_describe(tiny):
    backend = OpenVINOBackend()
    backend.load(tiny.onnx, OpenVINOBackend.Options(device="CPU"))
    try:
        info = backend.describe()
        assert info["device"] == "cpu"
        assert info["requested_device"] == "CPU"
        assert info["runtime"] == f"openvino {OpenVINOBackend.version()}"
    finally:
        backend.close()
    assert backend.describe()["device"] == "none"


def test_refuses_other_execution_device(tiny, monkeypatch):
    # No second device here, so pretend CPU compiled onto one: the check itself is what is tested.
    monkeypatch.setattr(ov_backend, "_execution_devices", lambda compiled: ["GPU.0"])
    with pytest.raises(BackendUnavailable, match="executes on GPU.0; refusing"):
        OpenVINOBackend().load(tiny.onnx, F32)


def test_refuses_lower_precision_when_f32_asked(tiny, monkeypatch):
    monkeypatch.setattr(ov_backend, "_precision", lambda compiled: "bf16")
    with pytest.raises(BackendUnavailable, match="asked for f32 .* runs bf16"):
        OpenVINOBackend().load(tiny.onnx, F32)
    backend = OpenVINOBackend()
    backend.load(tiny.onnx, OpenVINOBackend.Options(precision="auto"))  # only an f32 request is held to it
    backend.close()


def test_declared_signature_mismatch(tiny):
    declared = TINY_SIGNATURE.model_copy(update={"inputs": (TINY_SIGNATURE.inputs[0].model_copy(
        update={"name": "input"}),)})
    with pytest.raises(BackendUnavailable, match="declared input 'input' is not in tiny.onnx; it has x"):
        OpenVINOBackend().load(tiny.onnx, F32, declared)


@pytest.mark.parametrize(("requested", "actual", "same"), [
    ("CPU", "CPU", True), ("GPU", "GPU.1", True), ("GPU.1", "GPU.0", False), ("GPU.0", "GPU", True),
    ("gpu", "(GPU.0)", True), ("NPU", "CPU", False),
])
def test_same_device(requested, actual, same):
    assert ov_backend._same_device(requested, actual) is same


def test_tune_for_instances_splits_cpu_threads(monkeypatch):
    monkeypatch.setattr(hotswap_base.os, "cpu_count", lambda: 16)  # the split is hotswap's threads_per_instance
    assert OpenVINOBackend.tune_for_instances(F32, 4).inference_num_threads == 4
    assert OpenVINOBackend.tune_for_instances(F32, 1).inference_num_threads is None
    pinned = F32.model_copy(update={"inference_num_threads": 3})
    assert OpenVINOBackend.tune_for_instances(pinned, 4).inference_num_threads == 3
    gpu = OpenVINOBackend.Options(device="GPU")
    assert OpenVINOBackend.tune_for_instances(gpu, 4).inference_num_threads is None


def test_entry_point_registered():
    names = {ep.name: ep.value for ep in entry_points(group="hotswap.backends")}
    assert names.get("openvino") == "hotswap_openvino.backend:OpenVINOBackend"
    registry = discover_backends()
    assert registry.get("openvino") is OpenVINOBackend, registry.failed.get("openvino")
    assert registry.distributions["openvino"].startswith("hotswap-openvino ")


def test_accelerators_and_formats():
    assert OpenVINOBackend.formats == (".xml", ".onnx")
    assert set(OpenVINOBackend.accelerators()) == {"gpu", "npu"}
    assert OpenVINOBackend.accelerators()["gpu"].device == "GPU"
