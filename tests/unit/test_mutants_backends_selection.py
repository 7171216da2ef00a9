"""Backend discovery's and chain selection's edges, each pinned by a mutant that survived the rest of the
suite: the accelerator targets `hotswap backends` probes, $HOTSWAP_BACKENDS, further instances of a selection,
and the reason a chain gives for each entry it passed over. Real onnxruntime sessions and torch modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.backends.selection import load_instance, select_backend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import ModelConfig
from hotswap.errors import BackendUnavailable
from hotswap.models.sources import ModelSource
from hotswap.testing import TINY_SIGNATURE, TinyModels

REGISTRY = BackendRegistry(available={"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend})


def test_accelerator_targets_that_hotswap_backends_probes():
    providers = {kind: [p.name for p in options.providers]
                 for kind, options in OnnxRuntimeBackend.accelerators().items()}
    assert providers == {"cuda": ["CUDAExecutionProvider"], "tensorrt": ["TensorrtExecutionProvider"],
                         "ascend": ["CANNExecutionProvider"], "openvino": ["OpenVINOExecutionProvider"],
                         "rocm": ["ROCMExecutionProvider"], "directml": ["DmlExecutionProvider"]}
    devices = {kind: options.device for kind, options in TorchBackend.accelerators().items()}
    assert devices == {"cuda": "cuda:0", "npu": "npu:0", "xpu": "xpu:0", "mps": "mps:0"}


def _declared_torch_model(tiny: TinyModels) -> ModelConfig:
    return ModelConfig(name="tiny", source=str(tiny.exported), backends=[{"name": "torch", "device": "cpu"}],
                       inputs=[s.model_dump() for s in TINY_SIGNATURE.inputs],
                       outputs=[s.model_dump() for s in TINY_SIGNATURE.outputs])


def test_every_instance_serves_the_declared_output_names(tiny: TinyModels):
    # torch.export names its outputs output_0, output_1: only the declared signature says y and z.
    cfg = _declared_torch_model(tiny)
    source = ModelSource([tiny.exported])
    selection, first = select_backend(cfg, source, REGISTRY)
    second = load_instance(selection, source, cfg)
    try:
        x = np.ones((2, 8), np.float32)
        assert second.signature == first.signature == TINY_SIGNATURE
        assert set(second.infer({"x": x})) == {"y", "z"}
    finally:
        first.close()
        second.close()


def test_another_instance_needs_the_artifact_the_selection_came_from(tiny: TinyModels):
    cfg = _declared_torch_model(tiny)
    selection, first = select_backend(cfg, ModelSource([tiny.exported]), REGISTRY)
    first.close()
    with pytest.raises(BackendUnavailable) as info:
        load_instance(selection, ModelSource([tiny.onnx]), cfg)
    assert str(info.value) == "model 'tiny': the source no longer has a torch[cpu] artifact"


def test_hotswap_backends_lists_names_split_on_commas(monkeypatch):
    monkeypatch.setenv("HOTSWAP_BACKENDS", "onnxruntime,torch")
    assert sorted(discover_backends().available) == ["onnxruntime", "torch"]
    monkeypatch.setenv("HOTSWAP_BACKENDS", " torch , ")
    assert sorted(discover_backends().available) == ["torch"]

def _only_reason(backends: list[dict], artifacts: list[Path]) -> str:
    cfg = ModelConfig(name="m", source=str(artifacts[0]), backends=backends)
    with pytest.raises(BackendUnavailable) as info:
        select_backend(cfg, ModelSource(artifacts), REGISTRY)
    head, reason = str(info.value).split("\n")
    assert head == "model 'm': no backend in its chain could load:"
    return reason


def test_each_invalid_option_of_a_programmatic_entry_is_one_clause_of_its_reason(tiny: TinyModels):
    assert _only_reason([{"name": "onnxruntime", "nosuch": 1, "intra_op_threads": "many"}], [tiny.onnx]) == (
        "  #0 onnxruntime: backend 'onnxruntime' options: intra_op_threads: Input should be a valid integer, "
        "unable to parse string as an integer (got 'many'); backend 'onnxruntime' options: nosuch: "
        "Extra inputs are not permitted (got 1)")


def test_an_entry_without_its_format_lists_what_the_source_has(tiny: TinyModels):
    assert _only_reason([{"name": "torch"}], [tiny.onnx, tiny.onnx.with_name("tiny.bin")]) == (
        "  #0 torch: backend 'torch' loads .pt2, .pt, .ts, .torchscript files; the source has tiny.onnx, tiny.bin")


def test_select_backend_alone_leaves_the_options_untuned(tiny: TinyModels):
    cfg = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}])
    selection, backend = select_backend(cfg, ModelSource([tiny.onnx]), REGISTRY)
    backend.close()
    assert selection.options.intra_op_threads is None


def test_every_entry_that_failed_is_reported_with_its_own_reason(tiny: TinyModels, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a TorchScript archive")
    cfg = _declared_torch_model(tiny).model_copy(update={"backends": _declared_torch_model(tiny).backends * 2})
    with pytest.raises(BackendUnavailable) as info:
        select_backend(cfg, ModelSource([broken]), REGISTRY)
    head, first, second = str(info.value).split("\n")
    assert head == "model 'tiny': no backend in its chain could load:"
    assert first.startswith("  #0 torch[cpu]: load failed: RuntimeError: ") and second.startswith("  #1 torch[cpu]: ")
    assert [(s.position, s.label) for s in info.value.skipped] == [(0, "torch[cpu]"), (1, "torch[cpu]")]


def test_backend_version_is_unknown_unless_a_backend_says():
    from hotswap.backends.base import Backend

    assert Backend.version() == "unknown"


def test_a_refusal_at_load_is_reported_as_the_backend_said_it(tiny: TinyModels):
    assert _only_reason([{"name": "torch"}], [tiny.torchscript]) == (
        "  #0 torch: tiny.pt is TorchScript, which carries no tensor names: declare `inputs` and `outputs` in the "
        "model config")
