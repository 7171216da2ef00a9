"""The onnxruntime backend's edges, each pinned by a mutant that survived the rest of the suite: string
tensors of any rank and emptiness, describe before load and after close, shapes and output types from the
graph, placement refusals, session options and probe messages. Real onnxruntime sessions: nothing is faked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.errors import BackendUnavailable, InvalidInput
from hotswap.testing import TinyModels


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
