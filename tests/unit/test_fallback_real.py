"""No silent CPU run with a real onnxruntime session.

This machine's onnxruntime lists AzureExecutionProvider as available, and a session asked
for it alone comes up with [AzureExecutionProvider, CPUExecutionProvider] active while every
node of an ordinary graph is assigned to the CPU provider: exactly the case where a
provider-list check alone would serve on CPU while reporting `azure:0`.
"""

from __future__ import annotations

import onnxruntime
import pytest

from hotswap.backends.onnxruntime_backend import CPU, OnnxRuntimeBackend, check_placement
from hotswap.errors import BackendUnavailable
from hotswap.testing import TinyModels

AZURE = "AzureExecutionProvider"


def options(**values) -> OnnxRuntimeBackend.Options:
    return OnnxRuntimeBackend.Options.model_validate(values)


@pytest.fixture
def azure() -> None:
    reason = OnnxRuntimeBackend.probe(options(providers=[AZURE]))
    if reason is not None:
        pytest.skip(reason)


def test_azure_alone_is_refused_by_default(azure, tiny: TinyModels):
    """Default mode: Azure is active but runs none of the 3 nodes, so the load fails naming it and why."""
    backend = OnnxRuntimeBackend()
    with pytest.raises(BackendUnavailable) as info:
        backend.load(tiny.onnx, options(providers=[AZURE]))
    message = str(info.value)
    assert f"activated {AZURE} but assigned it none of the model's 3 nodes (3 on {CPU})" in message
    assert backend.signature is None and backend.describe()["device"] == "none"


def test_azure_alone_is_refused_in_strict_mode(azure, tiny: TinyModels):
    """strict: onnxruntime itself refuses the session (session.disable_cpu_ep_fallback), and the reason says so."""
    with pytest.raises(BackendUnavailable) as info:
        OnnxRuntimeBackend().load(tiny.onnx, options(providers=[AZURE], strict=True))
    message = str(info.value)
    assert f"could not create a session for tiny.onnx with ['{AZURE}']" in message
    assert "fallback to CPU EP has been explicitly disabled" in message


def test_azure_with_cpu_named_is_still_refused(azure, tiny: TinyModels):
    """[Azure, CPU]: CPU is allowed for leftovers, but an accelerator that runs nothing is not a placement."""
    with pytest.raises(BackendUnavailable, match=f"activated {AZURE} but assigned it none"):
        OnnxRuntimeBackend().load(tiny.onnx, options(providers=[AZURE, CPU]))


def test_describe_reports_where_nodes_run(tiny: TinyModels):
    """describe() reads the real node placement back from onnxruntime, and the device follows it."""
    backend = OnnxRuntimeBackend()
    backend.load(tiny.onnx, options())
    try:
        info = backend.describe()
        assert info["nodes"] == f"{CPU}=3" and info["device"] == "cpu"
        assert info["providers"] == CPU
    finally:
        backend.close()


@pytest.mark.parametrize(("requested", "active", "placement"), [
    ([CPU], [CPU], {CPU: 3}),
    (["CUDAExecutionProvider"], ["CUDAExecutionProvider", CPU], {"CUDAExecutionProvider": 10, CPU: 2}),
    (["TensorrtExecutionProvider", "CUDAExecutionProvider"], ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                              CPU], {"TensorrtExecutionProvider": 12}),
    ([AZURE], [AZURE, CPU], {}),  # an onnxruntime that cannot say: only the active list is checked
])
def test_placements_that_load(requested, active, placement):
    """Any requested accelerator running nodes is enough (shape nodes on CPU, TensorRT leaving CUDA idle)."""
    check_placement(requested, active, placement)


def test_session_creation_failure_is_not_retried_on_cpu(tiny: TinyModels, capfd):
    """A provider whose session creation fails (as CUDA does when its libraries are missing) fails the load:
    onnxruntime's constructor fallback (enable_fallback) would otherwise retry on CPU and say so on stdout."""
    backend = OnnxRuntimeBackend()
    broken = options(providers=["BrokenExecutionProvider"])  # past the probe, as an installed but broken EP
    with pytest.warns(UserWarning, match="not in available provider names"):
        with pytest.raises(BackendUnavailable, match="could not create a session .*Unknown Provider Type"):
            backend._load(tiny.onnx, broken, None)
    assert "Falling back" not in capfd.readouterr().out


def test_run_time_fallback_is_off(tiny: TinyModels):
    """session.run() retries on CPU after an execution-provider failure while `_enable_fallback` is set:
    the loaded session must have it cleared (enable_fallback=0 at creation, disable_fallback() after)."""
    backend = OnnxRuntimeBackend()
    backend.load(tiny.onnx, options())
    try:
        assert isinstance(backend._session, onnxruntime.InferenceSession)
        assert backend._session._enable_fallback is False
    finally:
        backend.close()


@pytest.mark.parametrize(("values", "arena"), [({}, False), ({"cpu_mem_arena": True}, True)])
def test_cpu_mem_arena_reaches_the_session(tiny: TinyModels, values, arena):
    """The CPU arena is off unless asked for, so a burst's memory goes back (onnxruntime's own default is on)."""
    backend = OnnxRuntimeBackend()
    backend.load(tiny.onnx, options(**values))
    try:
        assert backend._session.get_session_options().enable_cpu_mem_arena is arena
    finally:
        backend.close()
