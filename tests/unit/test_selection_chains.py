"""Chain selection with the real torch and onnxruntime backends on the tiny models: onnxruntime provider
chains, mixed chains and the reason each entry passed over gets, a misbehaving entry's included.

This machine is CPU-only: accelerator entries must be skipped (or, alone, fail) with a
reason naming what is missing. Where a test needs the accelerator to be absent, it skips
on a machine that has it.
"""

from __future__ import annotations

import onnxruntime
import pytest

from hotswap.backends.onnxruntime_backend import ExecutionProvider, OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import select_backend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.errors import BackendUnavailable
from hotswap.models.sources import ModelSource
from tests.unit.selection_support import ORT_CPU, REGISTRY, check_serves, declared, model

ORT_CUDA = {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}

no_ort_cuda = pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                                 reason="onnxruntime has CUDA here")


# -- onnxruntime provider chains ----------------------------------------------------------

@no_ort_cuda
def test_single_cuda_entry_is_strict(tiny):
    with pytest.raises(BackendUnavailable) as info:
        select_backend(model(tiny.onnx, ORT_CUDA), ModelSource([tiny.onnx]), REGISTRY)
    message = str(info.value)
    assert "model 'tiny': no backend in its chain could load" in message
    assert "#0 onnxruntime[CUDAExecutionProvider]: " in message
    assert "has no CUDAExecutionProvider" in message
    assert "available: " in message and "CPUExecutionProvider" in message


@no_ort_cuda
def test_cuda_then_cpu_falls_back_with_a_reason(tiny):
    selection, backend = select_backend(model(tiny.onnx, ORT_CUDA, ORT_CPU), ModelSource([tiny.onnx]), REGISTRY)
    try:
        assert selection.position == 1
        assert selection.label == "onnxruntime[CPUExecutionProvider]"
        assert selection.backend_cls is OnnxRuntimeBackend
        (skipped,) = selection.skipped
        assert skipped.position == 0 and skipped.label == "onnxruntime[CUDAExecutionProvider]"
        assert "CUDAExecutionProvider" in skipped.reason
        assert skipped.as_dict() == {"position": 0, "backend": "onnxruntime[CUDAExecutionProvider]",
                                     "reason": skipped.reason}
        assert backend.describe()["device"] == "cpu"
        check_serves(backend, tiny)
    finally:
        backend.close()


@no_ort_cuda
def test_mixed_chain_on_a_torch_export_source(tiny):
    chain = [ORT_CUDA, {"name": "nosuch"}, {"name": "torch", "device": "cpu"}]
    selection, backend = select_backend(model(tiny.exported, *chain, **declared()), ModelSource([tiny.exported]),
                                        REGISTRY)
    try:
        assert selection.position == 2 and selection.backend_cls is TorchBackend
        first, second = selection.skipped
        # The format check comes before the probe: an .onnx-only backend on a .pt2 source
        # is passed over for its format, whatever providers it asks for.
        assert first.reason == "backend 'onnxruntime' loads .onnx files; the source has tiny.pt2"
        assert second.label == "nosuch"
        assert second.reason.startswith("backend 'nosuch' is not installed")
        assert "available: onnxruntime, torch" in second.reason
        check_serves(backend, tiny)
    finally:
        backend.close()


@no_ort_cuda
def test_probe_reason_when_the_format_matches(tiny):
    """With both artifacts present, the CUDA entry is skipped for its provider instead."""
    chain = [ORT_CUDA, {"name": "torch"}]
    source = ModelSource([tiny.exported, tiny.onnx])
    selection, backend = select_backend(model(tiny.onnx, *chain), source, REGISTRY)
    backend.close()
    assert selection.position == 1
    assert "has no CUDAExecutionProvider" in selection.skipped[0].reason


def test_no_artifact_for_any_backend(tiny, tmp_path):
    other = tmp_path / "model.tflite"
    other.write_bytes(b"")
    with pytest.raises(BackendUnavailable) as info:
        select_backend(model(other, ORT_CPU, {"name": "torch"}), ModelSource([other]), REGISTRY)
    message = str(info.value)
    assert "#0 onnxruntime[CPUExecutionProvider]: backend 'onnxruntime' loads .onnx files" in message
    assert "#1 torch: backend 'torch' loads .pt2, .pt, .ts, .torchscript files; the source has model.tflite" in message


def test_load_failure_is_a_reason_and_the_chain_goes_on(tiny, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    source = ModelSource([corrupt, tiny.exported])
    selection, backend = select_backend(model(corrupt, ORT_CPU, {"name": "torch"}), source, REGISTRY)
    backend.close()
    assert selection.position == 1
    reason = selection.skipped[0].reason
    assert "onnxruntime could not create a session for corrupt.onnx" in reason


def test_declared_signature_must_match_the_onnx_file(tiny):
    bad = declared()
    bad["inputs"][0]["name"] = "input_ids"
    with pytest.raises(BackendUnavailable, match="declared input 'input_ids' is not in tiny.onnx; it has x"):
        select_backend(model(tiny.onnx, ORT_CPU, **bad), ModelSource([tiny.onnx]), REGISTRY)
    wrong_type = declared()
    wrong_type["outputs"][0]["datatype"] = "FP16"
    with pytest.raises(BackendUnavailable, match=r"declared output 'y' is FP16\[-1, 4\] but tiny.onnx has FP32"):
        select_backend(model(tiny.onnx, ORT_CPU, **wrong_type), ModelSource([tiny.onnx]), REGISTRY)
    selection, backend = select_backend(model(tiny.onnx, ORT_CPU, **declared()), ModelSource([tiny.onnx]), REGISTRY)
    backend.close()
    assert selection.position == 0


def test_ort_strict_on_cpu_loads(tiny):
    selection, backend = select_backend(model(tiny.onnx, {**ORT_CPU, "strict": True}), ModelSource([tiny.onnx]),
                                        REGISTRY)
    try:
        assert selection.options.strict is True
        check_serves(backend, tiny)
    finally:
        backend.close()


def test_ort_describe_lists_providers(tiny):
    backend = OnnxRuntimeBackend()
    assert backend.describe()["device"] == "none"
    signature = backend.load(tiny.onnx, OnnxRuntimeBackend.Options())
    try:
        assert [s.name for s in signature.inputs] == ["x"] and signature.output_names() == ["y", "z"]
        assert signature.inputs[0].shape == (-1, 8) and signature.inputs[0].datatype == "FP32"
        info = backend.describe()
        assert info["device"] == "cpu"
        assert info["providers"].split(",") == ["CPUExecutionProvider"]
        assert info["runtime"] == f"onnxruntime {onnxruntime.__version__}"
    finally:
        backend.close()
        backend.close()


def test_ort_provider_names_or_specs():
    options = OnnxRuntimeBackend.Options.model_validate(
        {"providers": ["CUDAExecutionProvider", {"name": "CPUExecutionProvider", "options": {"x": 1}}]})
    assert [p.name for p in options.providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options.providers[1].options == {"x": 1}
    assert OnnxRuntimeBackend.Options().providers == [ExecutionProvider(name="CPUExecutionProvider")]
    with pytest.raises(ValueError, match="bogus"):
        OnnxRuntimeBackend.Options.model_validate({"providers": [{"name": "CPUExecutionProvider", "bogus": 1}]})


# -- a chain entry that misbehaves is skipped with a reason, never stops the chain --------

class ProbeRaises(OnnxRuntimeBackend):
    name = "proberaises"

    @classmethod
    def probe(cls, options):
        raise OSError("driver handshake failed")


def test_a_probe_that_raises_is_a_reason(tiny):
    registry = BackendRegistry(available={**REGISTRY.available, "proberaises": ProbeRaises})
    selection, backend = select_backend(model(tiny.onnx, {"name": "proberaises"}, ORT_CPU),
                                        ModelSource([tiny.onnx]), registry)
    backend.close()
    assert selection.position == 1
    assert selection.skipped[0].reason == "probe raised OSError: driver handshake failed"


def test_unvalidated_bad_options_are_a_reason(tiny):
    """Configs built without a registry skip option checks; selection still reports, not raises."""
    cfg = model(tiny.exported, {"name": "torch", "device": "gpu!!"}, {"name": "torch", "bogus": 1},
                {"name": "torch"}, **declared())
    selection, backend = select_backend(cfg, ModelSource([tiny.exported]), REGISTRY)
    backend.close()
    assert selection.position == 2
    first, second = (s.reason for s in selection.skipped)
    assert first.startswith("backend 'torch' options: device: ") and "'gpu!!'" in first
    assert second.startswith("backend 'torch' options: bogus: Extra inputs are not permitted")
