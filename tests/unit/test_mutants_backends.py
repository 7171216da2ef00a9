"""The built-in backends' edges, each pinned by a mutant that survived the rest of the suite.

Real onnxruntime sessions and torch modules throughout: no backend is faked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.backends.selection import load_instance, select_backend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import ModelConfig
from hotswap.errors import BackendError, BackendUnavailable, InvalidInput
from hotswap.models.sources import ModelSource
from hotswap.testing import TINY_SIGNATURE, TinyModels

REGISTRY = BackendRegistry(available={"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend})


@pytest.fixture(scope="module")
def strings_2d(tmp_path_factory) -> Path:
    """An ONNX Identity over a rank-2 string tensor: text STRING[-1, -1] -> echo."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])], "strings_2d",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [-1, -1])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, [-1, -1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("strings_2d") / "strings_2d.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ort_strings(strings_2d: Path):
    backend = OnnxRuntimeBackend()
    backend.load(strings_2d, OnnxRuntimeBackend.Options())
    yield backend
    backend.close()


def test_bytes_elements_reach_onnxruntime_as_text_in_their_shape(ort_strings):
    text = np.array([[b"a", "é".encode()], [b"", b"xyz"]], dtype=object)
    echo = ort_strings.infer({"text": text})["echo"]
    assert echo.shape == (2, 2)
    assert echo.tolist() == [["a", "é"], ["", "xyz"]]


def test_str_elements_pass_through_as_they_are(ort_strings):
    echo = ort_strings.infer({"text": np.array([["a", "b"]], dtype=object)})["echo"]
    assert echo.tolist() == [["a", "b"]]


def test_invalid_utf8_is_an_invalid_input_naming_the_input(ort_strings):
    with pytest.raises(InvalidInput) as info:
        ort_strings.infer({"text": np.array([[b"ok", b"\xff"]], dtype=object)})
    assert str(info.value) == ("input 'text': element is not valid UTF-8 (invalid start byte); "
                               "expected UTF-8 text for a string tensor")


def test_an_empty_string_batch_is_still_a_string_tensor(ort_strings):
    echo = ort_strings.infer({"text": np.empty((0, 2), dtype=object)})["echo"]
    assert echo.shape == (0, 2)


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


# -- torch ------------------------------------------------------------------------------------

def _scripted(tmp_path: Path, module, name: str) -> Path:
    import torch

    path = tmp_path / f"{name}.pt"
    torch.jit.script(module).save(str(path))
    return path


def _torch(path: Path, inputs: list[dict], outputs: list[dict]) -> TorchBackend:
    from hotswap.models.signature import Signature, TensorSpec

    backend = TorchBackend()
    backend.load(path, TorchBackend.Options(device="cpu"),
                 Signature(inputs=tuple(TensorSpec(**s) for s in inputs),
                           outputs=tuple(TensorSpec(**s) for s in outputs)))
    return backend


X8 = {"name": "x", "datatype": "FP32", "shape": [-1, 8]}


def test_a_torchscript_error_reaches_the_client_as_the_models_own_last_line(tmp_path):
    import torch

    class Flaky(torch.nn.Module):
        def forward(self, x):
            if bool(x.abs().max() > 1000.0):
                raise RuntimeError("value too large")
            return x * 2.0

    backend = _torch(_scripted(tmp_path, Flaky(), "flaky"), [X8], [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}])
    try:
        with pytest.raises(BackendError) as info:
            backend.infer({"x": np.full((1, 8), 5000.0, np.float32)})
        assert str(info.value) == "backend 'torch' failed: RuntimeError: builtins.RuntimeError: value too large"
    finally:
        backend.close()


def test_wider_and_narrower_float_outputs_come_back_as_fp32_and_integers_stay(tmp_path):
    import torch

    class Mixed(torch.nn.Module):
        def forward(self, x):
            return x.double() * 2.0, x.half(), (x > 0).sum(dim=1)

    outputs = [{"name": "d", "datatype": "FP32", "shape": [-1, 8]}, {"name": "h", "datatype": "FP32", "shape": [-1, 8]},
               {"name": "n", "datatype": "INT64", "shape": [-1]}]
    backend = _torch(_scripted(tmp_path, Mixed(), "mixed"), [X8], outputs)
    try:
        x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
        out = backend.infer({"x": x})
        assert {k: v.dtype for k, v in out.items()} == {"d": np.float32, "h": np.float32, "n": np.int64}
        np.testing.assert_allclose(out["d"], x * 2, rtol=1e-6)
        assert out["n"].tolist() == [0, 8]
    finally:
        backend.close()


def test_describe_before_load_after_close_and_without_parameters(tmp_path):
    import torch

    fresh = TorchBackend()
    assert fresh.describe() == {"device": "none", "precision": "none", "runtime": f"torch {torch.__version__}"}
    assert fresh.memory_bytes() is None

    class Double(torch.nn.Module):  # no parameters: the device is the one it was loaded on
        def forward(self, x):
            return x * 2.0

    y8 = {"name": "y", "datatype": "FP32", "shape": [-1, 8]}
    backend = _torch(_scripted(tmp_path, Double(), "double"), [X8], [y8])
    assert backend.describe()["device"] == "cpu"
    assert backend.memory_bytes() is None  # CPU memory is not accelerator memory
    backend.close()
    assert backend.describe() == {"device": "cpu", "precision": "float32", "runtime": f"torch {torch.__version__}"}
    with pytest.raises(BackendError) as info:
        TorchBackend().infer({"x": np.zeros((1, 8), np.float32)})
    assert str(info.value) == "backend 'torch' has no model loaded"


def test_hotswap_backends_lists_names_split_on_commas(monkeypatch):
    monkeypatch.setenv("HOTSWAP_BACKENDS", "onnxruntime,torch")
    assert sorted(discover_backends().available) == ["onnxruntime", "torch"]
    monkeypatch.setenv("HOTSWAP_BACKENDS", " torch , ")
    assert sorted(discover_backends().available) == ["torch"]


def test_a_model_that_fails_its_warm_up_is_refused_at_load(tmp_path):
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot run")

    with pytest.raises(BackendUnavailable) as info:
        _torch(_scripted(tmp_path, Broken(), "broken"), [X8], [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}])
    message = str(info.value)
    assert message.startswith("warm-up on cpu failed: Error: The following operation failed in the TorchScript")
    assert message.rstrip().endswith("builtins.RuntimeError: cannot run")


def test_torchscript_without_a_declared_signature_says_what_to_declare(tiny: TinyModels):
    with pytest.raises(BackendUnavailable) as info:
        TorchBackend().load(tiny.torchscript, TorchBackend.Options(device="cpu"))
    assert str(info.value) == ("tiny.pt is TorchScript, which carries no tensor names: "
                               "declare `inputs` and `outputs` in the model config")


def test_bfloat16_on_cpu_computes_in_bfloat16_and_answers_fp32(tiny: TinyModels):
    backend = TorchBackend()
    backend.load(tiny.exported, TorchBackend.Options(device="cpu", dtype="bfloat16"), TINY_SIGNATURE)
    try:
        x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
        out, ref = backend.infer({"x": x}), tiny.reference({"x": x})
        assert out["y"].dtype == np.float32 and backend.describe()["precision"] == "bfloat16"
        np.testing.assert_allclose(out["y"], ref["y"], atol=0.05)
        assert not np.array_equal(out["y"], ref["y"])  # really computed in bfloat16, not in fp32
        assert next(backend._module.parameters()).dtype == __import__("torch").bfloat16
    finally:
        backend.close()


def test_threads_option_sets_torchs_cpu_pool(tiny: TinyModels):
    import torch

    before = torch.get_num_threads()
    backend = TorchBackend()
    try:
        backend.load(tiny.exported, TorchBackend.Options(device="cpu", threads=1), TINY_SIGNATURE)
        assert torch.get_num_threads() == 1
    finally:
        backend.close()
        torch.set_num_threads(before)


def test_probe_any_cpu_index_is_the_cpu_and_unknown_device_types_are_named():
    import torch

    assert TorchBackend.probe(TorchBackend.Options(device="cpu:1")) is None
    assert TorchBackend.probe(TorchBackend.Options(device="nosuch:0")) == (
        f"torch {torch.__version__} has no 'nosuch' device type")
    assert TorchBackend.probe(TorchBackend.Options(device="nn")) == (  # torch.nn is no device module
        f"torch {torch.__version__} has no 'nn' device type")
    with pytest.raises(ValueError) as info:
        TorchBackend.probe(TorchBackend.Options.model_construct(device="cuda 0"))
    assert str(info.value) == "'cuda 0' is not a torch device string like 'cpu', 'cuda:0' or 'npu:0'"


def test_describe_reports_where_the_parameters_are(tiny: TinyModels):
    backend = TorchBackend()
    backend.load(tiny.exported, TorchBackend.Options(device="cpu:1"), TINY_SIGNATURE)  # any CPU index is the CPU
    try:
        assert backend.describe()["device"] == "cpu"
    finally:
        backend.close()


def test_probe_says_which_cuda_torch_was_built_with_only_for_cuda():
    import torch

    if torch.cuda.is_available() or torch.xpu.is_available():
        pytest.skip("a cuda or xpu device is available here: the probe accepts it")
    assert TorchBackend.probe(TorchBackend.Options(device="cuda:0")) == (
        f"torch {torch.__version__}, built with CUDA {torch.version.cuda}: no cuda device is available "
        "(no device or driver)")
    assert TorchBackend.probe(TorchBackend.Options(device="xpu:0")) == (
        f"torch {torch.__version__}: no xpu device is available (no device or driver)")


# -- onnxruntime describe, chain entry reasons --------------------------------------------------

def test_onnxruntime_describe_before_load_loaded_and_after_close(tiny: TinyModels):
    import onnxruntime

    backend = OnnxRuntimeBackend()
    idle = {"device": "none", "runtime": f"onnxruntime {onnxruntime.__version__}"}
    assert backend.describe() == idle
    backend.load(tiny.onnx, OnnxRuntimeBackend.Options())
    assert backend.describe() == {"device": "cpu", "providers": "CPUExecutionProvider",
                                  "nodes": "CPUExecutionProvider=3", "precision": "as exported",
                                  "runtime": f"onnxruntime {onnxruntime.__version__}"}
    backend.close()
    assert backend.describe() == idle


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


def _onnx(tmp_path: Path, name: str, node: str, inputs: list, outputs: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node(node, [i.name for i in inputs], [o.name for o in outputs])],
                              name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_a_fixed_zero_dimension_stays_fixed(tmp_path):
    from onnx import TensorProto, helper

    path = _onnx(tmp_path, "empty_rows", "Identity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 0])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 0])])
    backend = OnnxRuntimeBackend()
    signature = backend.load(path, OnnxRuntimeBackend.Options())
    backend.close()
    assert [s.shape for s in signature.inputs + signature.outputs] == [(-1, 0), (-1, 0)]


def test_an_output_v2_cannot_carry_is_refused_naming_onnxruntimes_type(tmp_path):
    from onnx import TensorProto, helper

    path = _onnx(tmp_path, "sequence", "SequenceConstruct",
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1])],
                 [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)])
    with pytest.raises(ValueError, match=r"input_value='seq\(tensor\(float\)\)'"):
        OnnxRuntimeBackend().load(path, OnnxRuntimeBackend.Options())


def test_placement_refusals_list_every_provider():
    from hotswap.backends.onnxruntime_backend import check_placement

    with pytest.raises(BackendUnavailable) as info:
        check_placement(["CUDAExecutionProvider", "TensorrtExecutionProvider"],
                        ["AzureExecutionProvider", "CPUExecutionProvider"], {})
    assert str(info.value) == ("onnxruntime did not activate CUDAExecutionProvider, TensorrtExecutionProvider "
                               "(active: AzureExecutionProvider, CPUExecutionProvider); refusing to run on another "
                               "device")
    with pytest.raises(BackendUnavailable) as info:
        check_placement(["AzureExecutionProvider", "CUDAExecutionProvider"],
                        ["AzureExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                        {"CPUExecutionProvider": 2, "AzureExecutionProvider": 0})
    assert str(info.value) == ("onnxruntime activated AzureExecutionProvider, CUDAExecutionProvider but assigned it "
                               "none of the model's 2 nodes (2 on CPUExecutionProvider, 0 on AzureExecutionProvider); "
                               "refusing to report AzureExecutionProvider while every node runs elsewhere")


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


def test_a_read_only_input_is_copied_before_torch_sees_it(tmp_path):
    import torch

    class AddInPlace(torch.nn.Module):
        def forward(self, x):
            x.add_(1.0)
            return x

    backend = _torch(_scripted(tmp_path, AddInPlace(), "add_in_place"), [X8],
                     [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}])
    try:
        body = np.zeros((2, 8), np.float32).tobytes()
        x = np.frombuffer(body, np.float32).reshape(2, 8)  # read-only, as a binary request body arrives
        assert backend.infer({"x": x})["y"].tolist() == [[1.0] * 8] * 2
        assert np.frombuffer(body, np.float32).tolist() == [0.0] * 16  # the request's bytes are untouched
    finally:
        backend.close()


def test_integer_inputs_keep_their_type(tmp_path):
    import torch

    class Count(torch.nn.Module):
        def forward(self, ids):
            return ids * 2

    ids = {"name": "ids", "datatype": "INT64", "shape": [-1]}
    twice = {"name": "twice", "datatype": "INT64", "shape": [-1]}
    backend = _torch(_scripted(tmp_path, Count(), "count"), [ids], [twice])
    try:
        out = backend.infer({"ids": np.array([1, 2, 3], np.int64)})["twice"]
        assert out.dtype == np.int64 and out.tolist() == [2, 4, 6]
    finally:
        backend.close()


def test_backend_version_is_unknown_unless_a_backend_says():
    from hotswap.backends.base import Backend

    assert Backend.version() == "unknown"


def test_a_refusal_at_load_is_reported_as_the_backend_said_it(tiny: TinyModels):
    assert _only_reason([{"name": "torch"}], [tiny.torchscript]) == (
        "  #0 torch: tiny.pt is TorchScript, which carries no tensor names: declare `inputs` and `outputs` in the "
        "model config")


def test_session_options_built_for_onnxruntime():
    import onnxruntime

    backend = OnnxRuntimeBackend()
    so = backend._session_options(OnnxRuntimeBackend.Options())  # what onnxruntime.InferenceSession gets
    for pool in ("intra_op", "inter_op"):  # spinning is onnxruntime's own default
        with pytest.raises(RuntimeError, match="does not have configuration"):
            so.get_session_config_entry(f"session.{pool}.allow_spinning")
    assert so.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL and not so.enable_cpu_mem_arena
    so = backend._session_options(OnnxRuntimeBackend.Options(allow_spinning=False, inter_op_threads=2))
    assert [so.get_session_config_entry(f"session.{pool}.allow_spinning") for pool in ("intra_op", "inter_op")] == [
        "0", "0"]
    assert so.inter_op_num_threads == 2 and so.execution_mode == onnxruntime.ExecutionMode.ORT_PARALLEL


def test_probe_names_every_missing_provider_and_what_is_available():
    import onnxruntime

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers()):
        pytest.skip("onnxruntime has CUDA or TensorRT here: the probe accepts them")
    options = OnnxRuntimeBackend.Options.model_validate(
        {"providers": ["CUDAExecutionProvider", "TensorrtExecutionProvider"]})
    assert OnnxRuntimeBackend.probe(options) == (
        f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider, TensorrtExecutionProvider "
        f"(available: {', '.join(onnxruntime.get_available_providers())}); install the onnxruntime build for "
        "that device")

