"""A conformance suite every backend must pass, built-in or plugin.

Use it from a plugin's tests:

    from hotswap.testing import BackendConformance, ConformanceCase, build_tiny_models

    class TestMyBackend(BackendConformance):
        @pytest.fixture(scope="class")
        def case(self, tmp_path_factory):
            tiny = build_tiny_models(tmp_path_factory.mktemp("tiny"))
            return ConformanceCase(MyBackend, MyBackend.Options(device="CPU"), tiny.onnx, tiny.reference,
                                   expected_device="cpu")

The tiny network is built here with torch (two outputs, one FP32 input [-1, 8]) and
exported to ONNX, TorchScript and torch.export, so no test needs a downloaded model.

Tests that prove a chain skips or refuses onnxruntime CUDA can only pass where it is
absent; they call `skip_if_ort_provider("CUDAExecutionProvider")`, which skips (saying
so) on a machine where the backend's own probe accepts that provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from hotswap.backends.base import Backend, BackendOptions
from hotswap.errors import InvalidInput
from hotswap.models.signature import Signature, Tensors, TensorSpec

TINY_SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 8)),),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 4)),
             TensorSpec(name="z", datatype="FP32", shape=(-1, 1))),
)


@dataclass
class TinyModels:
    """The same tiny network in every format, with a numpy reference."""

    onnx: Path
    torchscript: Path
    exported: Path
    weight: np.ndarray
    bias: np.ndarray
    signature: Signature = TINY_SIGNATURE

    def reference(self, inputs: Tensors) -> Tensors:
        y = np.maximum(inputs["x"] @ self.weight.T + self.bias, 0).astype(np.float32)
        return {"y": y, "z": y.sum(axis=1, keepdims=True)}


def build_tiny_models(directory: Path, seed: int = 0) -> TinyModels:
    """Export a small Linear+ReLU network with dynamic batch to .onnx, .pt and .pt2 in `directory`."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.linear(x))
            return y, y.sum(dim=1, keepdim=True)

    torch.manual_seed(seed)
    model = Tiny().eval()
    example = torch.randn(2, 8)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path, ts_path, pt2_path = directory / "tiny.onnx", directory / "tiny.pt", directory / "tiny.pt2"
    torch.onnx.export(model, (example,), str(onnx_path), input_names=["x"], output_names=["y", "z"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}, "z": {0: "batch"}}, dynamo=False)
    torch.jit.save(torch.jit.trace(model, example), str(ts_path))
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(pt2_path))
    return TinyModels(onnx_path, ts_path, pt2_path, model.linear.weight.detach().numpy().copy(),
                      model.linear.bias.detach().numpy().copy())


def ort_provider_present(provider: str) -> str | None:
    """Why a test that needs `provider` absent cannot run here, or None when it is absent.

    Asks the onnxruntime backend's own probe, so the answer is the one a chain walk gets.
    """
    from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend

    reason = OnnxRuntimeBackend.probe(OnnxRuntimeBackend.Options.model_validate({"providers": [provider]}))
    if reason is not None:
        return None
    return (f"onnxruntime has {provider} here (the backend probe accepts it), so a chain entry with it "
            "loads instead of being skipped; this test needs it absent")


def skip_if_ort_provider(provider: str = "CUDAExecutionProvider") -> None:
    """pytest.skip the calling test when onnxruntime can run `provider` on this machine."""
    reason = ort_provider_present(provider)
    if reason is not None:
        pytest.skip(reason)


@dataclass
class ConformanceCase:
    """What the suite needs to exercise one backend configuration."""

    backend_cls: type[Backend]
    options: BackendOptions
    artifact: Path
    reference: Callable[[Tensors], Tensors]
    expected_device: str
    declared: Signature | None = None
    atol: float = 1e-4
    input_name: str = "x"
    feature_dim: int = 8


class BackendConformance:
    """Subclass this in a test module and provide a `case` fixture (class scope)."""

    batch_sizes = (1, 2, 7, 32)

    @pytest.fixture(scope="class")
    def loaded(self, case: ConformanceCase) -> Iterator[Backend]:
        reason = case.backend_cls.probe(case.options)
        if reason:
            pytest.skip(reason)
        backend = case.backend_cls()
        signature = backend.load(case.artifact, case.options, case.declared)
        assert signature is backend.signature, "load() returns the signature it sets"
        yield backend
        backend.close()

    def _inputs(self, case: ConformanceCase, batch: int) -> Tensors:
        rng = np.random.default_rng(batch)
        return {case.input_name: rng.standard_normal((batch, case.feature_dim)).astype(np.float32)}

    def test_registered_name_and_options(self, case: ConformanceCase) -> None:
        assert case.backend_cls.name and isinstance(case.backend_cls.name, str)
        assert issubclass(case.backend_cls.Options, BackendOptions)
        assert case.backend_cls.Options.model_config.get("extra") == "forbid"
        with pytest.raises(ValidationError, match="not_an_option"):
            case.backend_cls.Options.model_validate({"not_an_option": 1})

    def test_load_is_the_base_template(self, case: ConformanceCase) -> None:
        # Backend.load probes, checks the declared signature and sets `signature`; a backend
        # that overrides it instead of `_load` would skip those.
        assert case.backend_cls.load is Backend.load, "implement _load(), not load()"

    def test_signature_served(self, loaded: Backend, case: ConformanceCase) -> None:
        assert loaded.signature is not None
        assert [s.name for s in loaded.signature.inputs] == [case.input_name]
        assert all(s.shape[0] == -1 for s in loaded.signature.inputs), "batch dim must be dynamic"

    @pytest.mark.parametrize("batch", batch_sizes)
    def test_infer_matches_reference(self, loaded: Backend, case: ConformanceCase, batch: int) -> None:
        inputs = self._inputs(case, batch)
        outputs = loaded.infer(inputs)
        expected = case.reference(inputs)
        assert set(outputs) == set(expected)
        for name, want in expected.items():
            assert outputs[name].shape == want.shape, name
            np.testing.assert_allclose(outputs[name], want, atol=case.atol, rtol=0, err_msg=name)

    def test_memory_bytes(self, loaded: Backend) -> None:
        used = loaded.memory_bytes()
        assert used is None or (isinstance(used, int) and used >= 0), used

    def test_describe_is_honest(self, loaded: Backend, case: ConformanceCase) -> None:
        info = loaded.describe()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())
        assert info["device"].lower().startswith(case.expected_device.lower()), info

    def test_missing_input(self, loaded: Backend, case: ConformanceCase) -> None:
        with pytest.raises(InvalidInput, match=f"'{case.input_name}' is missing"):
            loaded.infer({})

    def test_unknown_input(self, loaded: Backend, case: ConformanceCase) -> None:
        inputs = self._inputs(case, 2) | {"bogus": np.zeros((2, 1), np.float32)}
        with pytest.raises(InvalidInput, match="'bogus' is not an input"):
            loaded.infer(inputs)

    def test_wrong_dtype(self, loaded: Backend, case: ConformanceCase) -> None:
        bad = {case.input_name: np.zeros((2, case.feature_dim), np.int32)}
        with pytest.raises(InvalidInput, match="datatype INT32 .*expected FP32"):
            loaded.infer(bad)

    def test_wrong_rank(self, loaded: Backend, case: ConformanceCase) -> None:
        bad = {case.input_name: np.zeros((2, case.feature_dim, 1), np.float32)}
        with pytest.raises(InvalidInput, match="rank 3, expected rank 2"):
            loaded.infer(bad)

    def test_wrong_fixed_dim(self, loaded: Backend, case: ConformanceCase) -> None:
        bad = {case.input_name: np.zeros((2, case.feature_dim + 1), np.float32)}
        with pytest.raises(InvalidInput, match="does not match the model"):
            loaded.infer(bad)

    def test_close_is_idempotent(self, case: ConformanceCase) -> None:
        reason = case.backend_cls.probe(case.options)
        if reason:
            pytest.skip(reason)
        backend = case.backend_cls()
        backend.load(case.artifact, case.options, case.declared)
        backend.close()
        backend.close()
