"""Chain selection with the real torch and onnxruntime backends on the tiny models.

This machine is CPU-only: accelerator entries must be skipped (or, alone, fail) with a
reason naming what is missing. Where a test needs the accelerator to be absent, it skips
on a machine that has it.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
import torch

from hotswap.backends.onnxruntime_backend import ExecutionProvider, OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import load_instance, select_backend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import ModelConfig, parse_config
from hotswap.errors import BackendUnavailable
from hotswap.models.sources import ModelSource
from hotswap.testing import TINY_SIGNATURE

REGISTRY = BackendRegistry(available={"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend})
ORT_CUDA = {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}
ORT_CPU = {"name": "onnxruntime", "providers": ["CPUExecutionProvider"]}

no_ort_cuda = pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                                 reason="onnxruntime has CUDA here")
no_torch_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="torch has a CUDA device here")
no_torch_npu = pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed")


def model(source, *backends, **extra) -> ModelConfig:
    return ModelConfig(name="tiny", source=str(source), backends=list(backends), **extra)


def declared() -> dict:
    return {"inputs": [s.model_dump() for s in TINY_SIGNATURE.inputs],
            "outputs": [s.model_dump() for s in TINY_SIGNATURE.outputs]}


def check_serves(backend, tiny) -> None:
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    out = backend.infer({"x": x})
    ref = tiny.reference({"x": x})
    np.testing.assert_allclose(out["y"], ref["y"], atol=1e-4)
    np.testing.assert_allclose(out["z"], ref["z"], atol=1e-4)


# -- onnxruntime provider chains ----------------------------------------------------------

@no_ort_cuda
def test_single_cuda_entry_is_strict(tiny):
    with pytest.raises(BackendUnavailable) as info:
        select_backend(model(tiny.onnx, ORT_CUDA), ModelSource([tiny.onnx]), REGISTRY)
    message = str(info.value)
    assert "model 'tiny': no backend in its chain could load" in message
    assert "#0 onnxruntime[CUDAExecutionProvider]: " in message
    assert "has no CUDAExecutionProvider" in message
    assert "available: " in message and "CPUExecutionProvider" in message


@no_ort_cuda
def test_cuda_then_cpu_falls_back_with_a_reason(tiny):
    selection, backend = select_backend(model(tiny.onnx, ORT_CUDA, ORT_CPU), ModelSource([tiny.onnx]), REGISTRY)
    try:
        assert selection.position == 1
        assert selection.label == "onnxruntime[CPUExecutionProvider]"
        assert selection.backend_cls is OnnxRuntimeBackend
        (skipped,) = selection.skipped
        assert skipped.position == 0 and skipped.label == "onnxruntime[CUDAExecutionProvider]"
        assert "CUDAExecutionProvider" in skipped.reason
        assert skipped.as_dict() == {"position": 0, "backend": "onnxruntime[CUDAExecutionProvider]",
                                     "reason": skipped.reason}
        assert backend.describe()["device"] == "cpu"
        check_serves(backend, tiny)
    finally:
        backend.close()


@no_ort_cuda
def test_mixed_chain_on_a_torch_export_source(tiny):
    chain = [ORT_CUDA, {"name": "nosuch"}, {"name": "torch", "device": "cpu"}]
    selection, backend = select_backend(model(tiny.exported, *chain, **declared()), ModelSource([tiny.exported]),
                                        REGISTRY)
    try:
        assert selection.position == 2 and selection.backend_cls is TorchBackend
        first, second = selection.skipped
        # The format check comes before the probe: an .onnx-only backend on a .pt2 source
        # is passed over for its format, whatever providers it asks for.
        assert first.reason == "backend 'onnxruntime' loads .onnx files; the source has tiny.pt2"
        assert second.label == "nosuch"
        assert second.reason.startswith("backend 'nosuch' is not installed")
        assert "available: onnxruntime, torch" in second.reason
        check_serves(backend, tiny)
    finally:
        backend.close()


@no_ort_cuda
def test_probe_reason_when_the_format_matches(tiny):
    """With both artifacts present, the CUDA entry is skipped for its provider instead."""
    chain = [ORT_CUDA, {"name": "torch"}]
    source = ModelSource([tiny.exported, tiny.onnx])
    selection, backend = select_backend(model(tiny.onnx, *chain), source, REGISTRY)
    backend.close()
    assert selection.position == 1
    assert "has no CUDAExecutionProvider" in selection.skipped[0].reason


def test_no_artifact_for_any_backend(tiny, tmp_path):
    other = tmp_path / "model.tflite"
    other.write_bytes(b"")
    with pytest.raises(BackendUnavailable) as info:
        select_backend(model(other, ORT_CPU, {"name": "torch"}), ModelSource([other]), REGISTRY)
    message = str(info.value)
    assert "#0 onnxruntime[CPUExecutionProvider]: backend 'onnxruntime' loads .onnx files" in message
    assert "#1 torch: backend 'torch' loads .pt2, .pt, .ts, .torchscript files; the source has model.tflite" in message


def test_load_failure_is_a_reason_and_the_chain_goes_on(tiny, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    source = ModelSource([corrupt, tiny.exported])
    selection, backend = select_backend(model(corrupt, ORT_CPU, {"name": "torch"}), source, REGISTRY)
    backend.close()
    assert selection.position == 1
    reason = selection.skipped[0].reason
    assert "onnxruntime could not create a session for corrupt.onnx" in reason


def test_declared_signature_must_match_the_onnx_file(tiny):
    bad = declared()
    bad["inputs"][0]["name"] = "input_ids"
    with pytest.raises(BackendUnavailable, match="declared input 'input_ids' is not in tiny.onnx; it has x"):
        select_backend(model(tiny.onnx, ORT_CPU, **bad), ModelSource([tiny.onnx]), REGISTRY)
    wrong_type = declared()
    wrong_type["outputs"][0]["datatype"] = "FP16"
    with pytest.raises(BackendUnavailable, match=r"declared output 'y' is FP16\[-1, 4\] but tiny.onnx has FP32"):
        select_backend(model(tiny.onnx, ORT_CPU, **wrong_type), ModelSource([tiny.onnx]), REGISTRY)
    selection, backend = select_backend(model(tiny.onnx, ORT_CPU, **declared()), ModelSource([tiny.onnx]), REGISTRY)
    backend.close()
    assert selection.position == 0


def test_ort_strict_on_cpu_loads(tiny):
    selection, backend = select_backend(model(tiny.onnx, {**ORT_CPU, "strict": True}), ModelSource([tiny.onnx]),
                                        REGISTRY)
    try:
        assert selection.options.strict is True
        check_serves(backend, tiny)
    finally:
        backend.close()


def test_ort_describe_lists_providers(tiny):
    backend = OnnxRuntimeBackend()
    assert backend.describe()["device"] == "none"
    signature = backend.load(tiny.onnx, OnnxRuntimeBackend.Options())
    try:
        assert [s.name for s in signature.inputs] == ["x"] and signature.output_names() == ["y", "z"]
        assert signature.inputs[0].shape == (-1, 8) and signature.inputs[0].datatype == "FP32"
        info = backend.describe()
        assert info["device"] == "cpu"
        assert info["providers"].split(",") == ["CPUExecutionProvider"]
        assert info["runtime"] == f"onnxruntime {onnxruntime.__version__}"
    finally:
        backend.close()
        backend.close()


def test_ort_provider_names_or_specs():
    options = OnnxRuntimeBackend.Options.model_validate(
        {"providers": ["CUDAExecutionProvider", {"name": "CPUExecutionProvider", "options": {"x": 1}}]})
    assert [p.name for p in options.providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options.providers[1].options == {"x": 1}
    assert OnnxRuntimeBackend.Options().providers == [ExecutionProvider(name="CPUExecutionProvider")]
    with pytest.raises(ValueError, match="bogus"):
        OnnxRuntimeBackend.Options.model_validate({"providers": [{"name": "CPUExecutionProvider", "bogus": 1}]})


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


# -- Ascend (CANN) provider options -----------------------------------------------------

CANN_OPTIONS = {"device_id": 0, "precision_mode": "must_keep_origin_dtype", "npu_mem_limit": 8589934592,
                "enable_cann_graph": False}


def test_cann_options_parse():
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": CANN_OPTIONS},
                                                    "CPUExecutionProvider"])
    cann = options.providers[0]
    assert cann.name == "CANNExecutionProvider"
    assert cann.options == CANN_OPTIONS
    # Types survive validation (no bool -> int or int -> float coercion).
    assert type(cann.options["device_id"]) is int
    assert type(cann.options["npu_mem_limit"]) is int
    assert type(cann.options["enable_cann_graph"]) is bool
    assert options.providers[1] == ExecutionProvider(name="CPUExecutionProvider")


def test_cann_options_from_yaml_config():
    config = parse_config({"models": [{"name": "m", "source": "m.onnx", "backends": [
        {"name": "onnxruntime", "providers": [{"name": "CANNExecutionProvider", "options": CANN_OPTIONS}]},
        ORT_CPU]}]}, "test.yaml", REGISTRY)
    entry = config.models[0].backends[0]
    assert entry.label() == "onnxruntime[CANNExecutionProvider]"
    options = OnnxRuntimeBackend.Options.model_validate(entry.options)
    assert options.providers[0].options == CANN_OPTIONS


def test_cann_probe_reason_here():
    if "CANNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CANN here")
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": CANN_OPTIONS}])
    reason = OnnxRuntimeBackend.probe(options)
    assert "has no CANNExecutionProvider" in reason


class FakeSession:
    """Stands in for onnxruntime.InferenceSession and records what load() passed."""

    created: list[dict] = []
    active: list[str] = []

    def __init__(self, path, sess_options=None, providers=None, **kwargs):
        FakeSession.created.append({"path": path, "sess_options": sess_options, "providers": providers,
                                    "kwargs": kwargs})
        self._providers = providers
        self.fallback_disabled = False

    def disable_fallback(self):
        self.fallback_disabled = True

    def get_providers(self):
        return list(FakeSession.active)

    def get_provider_options(self):
        return {name: {k: v for k, v in opts.items()} for name, opts in self._providers if name in FakeSession.active}

    def get_inputs(self):
        return [SimpleNamespace(name="x", type="tensor(float)", shape=["batch", 8])]

    def get_outputs(self):
        return [SimpleNamespace(name="y", type="tensor(float)", shape=["batch", 4]),
                SimpleNamespace(name="z", type="tensor(float)", shape=["batch", 1])]


@pytest.fixture
def fake_cann(monkeypatch):
    available = ["CANNExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    FakeSession.created = []
    FakeSession.active = list(available)
    return FakeSession


def test_cann_provider_options_reach_onnxruntime_as_strings(fake_cann, tiny):
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": CANN_OPTIONS},
                                                    "CPUExecutionProvider"])
    backend = OnnxRuntimeBackend()
    signature = backend.load(tiny.onnx, options)
    (created,) = fake_cann.created
    assert created["path"] == str(tiny.onnx)
    # What onnxruntime's own Python wrapper would do: every provider option as a str.
    assert created["providers"] == [
        ("CANNExecutionProvider", {"device_id": "0", "precision_mode": "must_keep_origin_dtype",
                                   "npu_mem_limit": "8589934592", "enable_cann_graph": "False"}),
        ("CPUExecutionProvider", {}),
    ]
    assert created["kwargs"].get("enable_fallback") == 0
    assert created_fallback_entry(created) is None
    assert signature.inputs[0].shape == (-1, 8)
    info = backend.describe()
    assert info["device"] == "cann:0"
    assert info["providers"] == "CANNExecutionProvider,CPUExecutionProvider"
    backend.close()


def test_provider_not_activated_is_refused(fake_cann, tiny):
    """onnxruntime only warns when a requested provider does not activate: load must fail."""
    fake_cann.active = ["CPUExecutionProvider"]
    options = OnnxRuntimeBackend.Options(providers=[{"name": "CANNExecutionProvider", "options": {"device_id": 1}}])
    with pytest.raises(BackendUnavailable) as info:
        OnnxRuntimeBackend().load(tiny.onnx, options)
    message = str(info.value)
    assert "onnxruntime did not activate CANNExecutionProvider (active: CPUExecutionProvider)" in message
    assert "refusing to run on another device" in message


def test_cann_chain_falls_back_to_cpu_with_a_reason(tiny):
    if "CANNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CANN here")
    cann = {"name": "onnxruntime", "providers": [{"name": "CANNExecutionProvider", "options": CANN_OPTIONS}]}
    selection, backend = select_backend(model(tiny.onnx, cann, ORT_CPU), ModelSource([tiny.onnx]), REGISTRY)
    backend.close()
    assert selection.position == 1
    assert selection.skipped[0].label == "onnxruntime[CANNExecutionProvider]"
    assert "CANNExecutionProvider" in selection.skipped[0].reason


def created_fallback_entry(created: dict) -> str | None:
    try:
        return created["sess_options"].get_session_config_entry("session.disable_cpu_ep_fallback")
    except RuntimeError:  # "SessionOptions does not have configuration with key"
        return None


def test_strict_disables_cpu_fallback_unless_cpu_is_requested(fake_cann, tiny):
    cann = {"name": "CANNExecutionProvider", "options": {"device_id": 0}}
    fake_cann.active = ["CANNExecutionProvider"]
    OnnxRuntimeBackend().load(tiny.onnx, OnnxRuntimeBackend.Options(providers=[cann], strict=True))
    assert created_fallback_entry(fake_cann.created[-1]) == "1"

    # onnxruntime rejects CPUExecutionProvider together with disable_cpu_ep_fallback.
    fake_cann.active = ["CANNExecutionProvider", "CPUExecutionProvider"]
    OnnxRuntimeBackend().load(tiny.onnx, OnnxRuntimeBackend.Options(providers=[cann, "CPUExecutionProvider"],
                                                                    strict=True))
    assert created_fallback_entry(fake_cann.created[-1]) is None

    OnnxRuntimeBackend().load(tiny.onnx, OnnxRuntimeBackend.Options(providers=[cann]))
    assert created_fallback_entry(fake_cann.created[-1]) is None


# -- a chain entry that misbehaves is skipped with a reason, never stops the chain --------

class ProbeRaises(OnnxRuntimeBackend):
    name = "proberaises"

    @classmethod
    def probe(cls, options):
        raise OSError("driver handshake failed")


def test_a_probe_that_raises_is_a_reason(tiny):
    registry = BackendRegistry(available={**REGISTRY.available, "proberaises": ProbeRaises})
    selection, backend = select_backend(model(tiny.onnx, {"name": "proberaises"}, ORT_CPU),
                                        ModelSource([tiny.onnx]), registry)
    backend.close()
    assert selection.position == 1
    assert selection.skipped[0].reason == "probe raised OSError: driver handshake failed"


def test_unvalidated_bad_options_are_a_reason(tiny):
    """Configs built without a registry skip option checks; selection still reports, not raises."""
    cfg = model(tiny.exported, {"name": "torch", "device": "gpu!!"}, {"name": "torch", "bogus": 1},
                {"name": "torch"}, **declared())
    selection, backend = select_backend(cfg, ModelSource([tiny.exported]), REGISTRY)
    backend.close()
    assert selection.position == 2
    first, second = (s.reason for s in selection.skipped)
    assert first.startswith("backend 'torch' options: device: ") and "'gpu!!'" in first
    assert second.startswith("backend 'torch' options: bogus: Extra inputs are not permitted")
