"""The fault-injecting test plugin itself: installed with pip and found by entry point, a conformant
backend while healthy, and each fault exactly as its options say."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fault_support import fault_registry_for

from hotswap.backends.base import Backend
from hotswap.errors import BackendError
from hotswap.testing import BackendConformance, ConformanceCase, TinyModels


@pytest.fixture(scope="module")
def fault_cls(tmp_path_factory) -> type[Backend]:
    cls = fault_registry_for(tmp_path_factory).get("fault")
    assert cls is not None and cls.__module__ == "hotswap_fault", "discovered through its entry point"
    return cls


class TestHealthyFaultBackendConforms(BackendConformance):
    @pytest.fixture(scope="class")
    def case(self, tiny, tmp_path_factory):
        cls = fault_registry_for(tmp_path_factory).get("fault")
        return ConformanceCase(cls, cls.Options(), tiny.onnx, tiny.reference, "fault-cpu")


def loaded(cls: type[Backend], tiny: TinyModels, **options) -> Backend:
    backend = cls()
    backend.load(tiny.onnx, cls.Options(**options))
    return backend


X = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}


def test_raise_after_n_calls(fault_cls, tiny):
    backend = loaded(fault_cls, tiny, mode="raise", after=2)
    for _ in range(2):
        np.testing.assert_allclose(backend.infer(X)["y"], tiny.reference(X)["y"], atol=1e-5)
    with pytest.raises(BackendError, match="injected device fault on call 3"):
        backend.infer(X)
    backend.close()


def test_nan_and_perturbed_outputs(fault_cls, tiny):
    nan = loaded(fault_cls, tiny, mode="nan")
    assert all(np.isnan(v).all() for v in nan.infer(X).values())
    drift = loaded(fault_cls, tiny, mode="perturb", perturb=0.25)
    np.testing.assert_allclose(drift.infer(X)["y"], tiny.reference(X)["y"] + 0.25, atol=1e-5)
    nan.close()
    drift.close()


def test_slow_and_hang_and_close_wakes_a_hung_call(fault_cls, tiny):
    slow = loaded(fault_cls, tiny, mode="slow", delay_ms=200)
    started = time.perf_counter()
    slow.infer(X)
    assert time.perf_counter() - started >= 0.2
    slow.close()
    hung = loaded(fault_cls, tiny, mode="hang", hang_s=30)
    started = time.perf_counter()
    threading.Timer(0.3, hung.close).start()
    with pytest.raises(BackendError):  # closed under it: the session is gone when it wakes
        hung.infer(X)
    assert 0.25 <= time.perf_counter() - started < 10, "hung until closed, not for hang_s"


def test_faults_only_while_the_trigger_file_exists(fault_cls, tiny, tmp_path):
    trigger = tmp_path / "broken"
    backend = loaded(fault_cls, tiny, mode="raise", while_file=str(trigger))
    backend.infer(X)
    trigger.touch()
    with pytest.raises(BackendError, match="injected"):
        backend.infer(X)
    trigger.unlink()
    backend.infer(X)
    backend.close()
