"""Chain selection of torch entries: devices this CPU-only machine lacks (cuda, npu, an unknown type) are
skipped or refused with a reason, TorchScript needs a declared signature where torch.export has its own, and
further instances reuse a selection, with the CPU's threads split among them by both built-in backends."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.selection import load_instance, select_backend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.errors import BackendUnavailable
from hotswap.models.sources import ModelSource
from hotswap.testing import TINY_SIGNATURE
from tests.unit.selection_support import ORT_CPU, REGISTRY, check_serves, declared, model

no_torch_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="torch has a CUDA device here")
no_torch_npu = pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed")


# -- torch devices ------------------------------------------------------------------------

@no_torch_cuda
def test_single_torch_cuda_entry_is_strict(tiny):
    with pytest.raises(BackendUnavailable) as info:
        select_backend(model(tiny.exported, {"name": "torch", "device": "cuda:0"}), ModelSource([tiny.exported]),
                       REGISTRY)
    message = str(info.value)
    assert "#0 torch[cuda:0]: " in message
    assert "no cuda device is available" in message


@no_torch_npu
def test_torch_npu_without_torch_npu(tiny):
    reason = TorchBackend.probe(TorchBackend.Options(device="npu:0"))
    assert reason.startswith("torch_npu is not installed, so torch has no 'npu' device")
    assert "pip install torch-npu" in reason
    chain = [{"name": "torch", "device": "npu:0"}, {"name": "torch", "device": "cpu"}]
    selection, backend = select_backend(model(tiny.exported, *chain), ModelSource([tiny.exported]), REGISTRY)
    backend.close()
    assert selection.position == 1 and selection.skipped[0].label == "torch[npu:0]"
    assert "torch_npu is not installed" in selection.skipped[0].reason


def test_torch_unknown_device_type():
    reason = TorchBackend.probe(TorchBackend.Options(device="quantum:0"))
    assert reason == f"torch {torch.__version__} has no 'quantum' device type"


def test_torch_load_checks_the_device_too(tiny):
    """load() re-probes: a strict backend never silently runs on CPU."""
    if torch.cuda.is_available():
        pytest.skip("torch has a CUDA device here")
    backend = TorchBackend()
    with pytest.raises(BackendUnavailable, match="no cuda device"):
        backend.load(tiny.exported, TorchBackend.Options(device="cuda:0"))
    backend.close()


def test_torchscript_needs_a_declared_signature(tiny):
    with pytest.raises(BackendUnavailable) as info:
        select_backend(model(tiny.torchscript, {"name": "torch"}), ModelSource([tiny.torchscript]), REGISTRY)
    message = str(info.value)
    assert "tiny.pt is TorchScript, which carries no tensor names" in message
    assert "declare `inputs` and `outputs` in the model config" in message

    selection, backend = select_backend(model(tiny.torchscript, {"name": "torch"}, **declared()),
                                        ModelSource([tiny.torchscript]), REGISTRY)
    try:
        assert backend.signature == TINY_SIGNATURE
        check_serves(backend, tiny)
        assert backend.describe()["device"] == "cpu"
    finally:
        backend.close()


def test_torch_export_signature_from_the_program(tiny):
    backend = TorchBackend()
    signature = backend.load(tiny.exported, TorchBackend.Options())
    try:
        assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [("x", "FP32", (-1, 8))]
        assert [s.datatype for s in signature.outputs] == ["FP32", "FP32"]
        assert [s.shape for s in signature.outputs] == [(-1, 4), (-1, 1)]
        info = backend.describe()
        assert info["device"] == "cpu" and info["precision"] == "float32"
    finally:
        backend.close()


def test_load_instance_reuses_the_selection(tiny):
    cfg = model(tiny.onnx, ORT_CPU)
    source = ModelSource([tiny.onnx])
    selection, first = select_backend(cfg, source, REGISTRY)
    second = load_instance(selection, source, cfg)
    try:
        assert second is not first and type(second) is OnnxRuntimeBackend
        check_serves(second, tiny)
    finally:
        first.close()
        second.close()


# -- instances share the CPU ------------------------------------------------------------

def test_torch_tune_for_instances_splits_threads():
    cpus = os.cpu_count() or 1
    options = TorchBackend.Options()
    assert TorchBackend.tune_for_instances(options, 1) == options
    assert TorchBackend.tune_for_instances(options, 2).threads == max(1, cpus // 2)
    assert TorchBackend.tune_for_instances(options, 1000).threads == 1
    explicit = TorchBackend.Options(threads=3)
    assert TorchBackend.tune_for_instances(explicit, 4).threads == 3
    gpu = TorchBackend.Options(device="cuda:0")
    assert TorchBackend.tune_for_instances(gpu, 4).threads is None
    assert options.threads is None, "the original options are not modified"


def test_ort_tune_for_instances_splits_threads(tiny):
    cpus = os.cpu_count() or 1
    options = OnnxRuntimeBackend.Options()
    assert OnnxRuntimeBackend.tune_for_instances(options, 1).intra_op_threads is None
    assert OnnxRuntimeBackend.tune_for_instances(options, 2).intra_op_threads == max(1, cpus // 2)
    assert OnnxRuntimeBackend.tune_for_instances(options, 1000).intra_op_threads == 1
    explicit = OnnxRuntimeBackend.Options(intra_op_threads=3)
    assert OnnxRuntimeBackend.tune_for_instances(explicit, 4).intra_op_threads == 3
    assert options.intra_op_threads is None

    # select_backend applies it, and the tuned options are what further instances use.
    selection, backend = select_backend(model(tiny.onnx, ORT_CPU), ModelSource([tiny.onnx]), REGISTRY, instances=2)
    backend.close()
    assert selection.options.intra_op_threads == max(1, cpus // 2)
