"""The torch backend's edges, each pinned by a mutant that survived the rest of the suite: TorchScript error
text, warm-up failures, output and input dtypes, read-only request bytes, describe before load and after close,
bfloat16 and threads on CPU, and probe messages. Real torch modules: nothing is faked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.torch_backend import TorchBackend
from hotswap.errors import BackendError, BackendUnavailable
from hotswap.testing import TINY_SIGNATURE, TinyModels


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
