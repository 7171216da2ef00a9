"""The conformance suite on the built-in backends (CPU here; CUDA where a GPU exists)."""

from __future__ import annotations

import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.testing import TINY_SIGNATURE, BackendConformance, ConformanceCase


class TestOnnxRuntimeCPU(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(OnnxRuntimeBackend, OnnxRuntimeBackend.Options(), tiny.onnx, tiny.reference, "cpu")


class TestTorchScriptCPU(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(TorchBackend, TorchBackend.Options(device="cpu"), tiny.torchscript, tiny.reference,
                               "cpu", declared=TINY_SIGNATURE)


class TestTorchExportCPU(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(TorchBackend, TorchBackend.Options(device="cpu"), tiny.exported, tiny.reference, "cpu",
                               declared=TINY_SIGNATURE)


@pytest.mark.cuda
class TestTorchCUDA(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(TorchBackend, TorchBackend.Options(device="cuda:0"), tiny.exported, tiny.reference,
                               "cuda:0", declared=TINY_SIGNATURE)


@pytest.mark.cuda
class TestTorchCUDAHalf(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        return ConformanceCase(TorchBackend, TorchBackend.Options(device="cuda:0", dtype="float16"), tiny.exported,
                               tiny.reference, "cuda:0", declared=TINY_SIGNATURE, atol=2e-2)


@pytest.mark.cuda
class TestOnnxRuntimeCUDA(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny):
        options = OnnxRuntimeBackend.Options(providers=["CUDAExecutionProvider"], strict=True)
        return ConformanceCase(OnnxRuntimeBackend, options, tiny.onnx, tiny.reference, "cuda:0")
