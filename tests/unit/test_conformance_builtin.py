"""The conformance suite on the built-in backends (CPU here; CUDA where a GPU exists), and the
base class's `load` template."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotswap.backends import base
from hotswap.backends.base import Backend, BackendOptions, threads_per_instance
from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.errors import BackendUnavailable
from hotswap.models.signature import Signature, Tensors
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


# -- the template in the base class, on a backend with no runtime underneath -------------------

class Recording(Backend[BackendOptions]):
    """Serves whatever `served` says; records whether `_load` ran."""

    name = "recording"
    reason: str | None = None
    served = TINY_SIGNATURE

    def __init__(self) -> None:
        self.loaded = False

    @classmethod
    def probe(cls, options: BackendOptions) -> str | None:
        return cls.reason

    def _load(self, artifact: Path, options: BackendOptions, declared: Signature | None) -> Signature:
        self.loaded = True
        return self.served

    def run(self, inputs: Tensors) -> Tensors:
        return {}

    def describe(self) -> dict[str, str]:
        return {"device": "cpu"}

    def close(self) -> None:
        self.loaded = False


def test_load_probes_again_before_loading(monkeypatch):
    monkeypatch.setattr(Recording, "reason", "no device 0 any more")
    backend = Recording()
    with pytest.raises(BackendUnavailable, match="^no device 0 any more$"):
        backend.load(Path("m.bin"), BackendOptions())
    assert not backend.loaded and backend.signature is None


def test_load_checks_the_declared_signature_and_sets_it():
    backend = Recording()
    renamed = TINY_SIGNATURE.model_copy(update={"inputs": (TINY_SIGNATURE.inputs[0].model_copy(
        update={"name": "input"}),)})
    with pytest.raises(BackendUnavailable, match="declared input 'input' is not in m.bin; it has x"):
        backend.load(Path("m.bin"), BackendOptions(), renamed)
    assert backend.signature is None, "a refused load sets no signature"
    assert backend.load(Path("m.bin"), BackendOptions(), TINY_SIGNATURE) is TINY_SIGNATURE
    assert backend.signature is TINY_SIGNATURE and backend.memory_bytes() is None


def test_threads_per_instance(monkeypatch):
    monkeypatch.setattr(base.os, "cpu_count", lambda: 16)
    assert [threads_per_instance(n) for n in (1, 3, 16, 64)] == [16, 5, 1, 1]
    monkeypatch.setattr(base.os, "cpu_count", lambda: None)
    assert threads_per_instance(2) == 1


def test_worker_processes_split_the_cores_too(monkeypatch):
    """Under `serve --workers N` each worker's instances get their share of the cores, not all of them."""
    from hotswap.backends.base import CPU_SHARERS_ENV
    from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeOptions
    from hotswap.backends.torch_backend import TorchBackend, TorchOptions

    monkeypatch.setattr(base.os, "cpu_count", lambda: 16)
    assert OnnxRuntimeBackend.tune_for_instances(OnnxRuntimeOptions(), 1).intra_op_threads is None
    monkeypatch.setenv(CPU_SHARERS_ENV, "4")
    assert threads_per_instance(1) == 4 and threads_per_instance(2) == 2
    assert OnnxRuntimeBackend.tune_for_instances(OnnxRuntimeOptions(), 1).intra_op_threads == 4
    assert TorchBackend.tune_for_instances(TorchOptions(), 1).threads == 4
    monkeypatch.setenv(CPU_SHARERS_ENV, "not a number")
    assert threads_per_instance(1) == 16
