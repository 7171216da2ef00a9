"""OpenVINO backend: one compiled model per instance, device and precision verified at load.

OpenVINO decides two things silently that matter for serving. AUTO, HETERO and MULTI
place a model on whichever device works, so a GPU request can end up on the CPU. And the
CPU plugin runs f32 models in bf16 by default on CPUs with AVX512-BF16/AMX, which moves
outputs by ~1e-3. This backend pins INFERENCE_PRECISION_HINT (f32 unless told otherwise),
reads EXECUTION_DEVICES and the precision back from the compiled model, and refuses to
serve when either is not what the config asked for.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from hotswap.backends.base import Backend, BackendOptions, cpu_sharers, threads_per_instance
from hotswap.errors import BackendUnavailable
from hotswap.models.signature import Signature, Tensors, TensorSpec

# OpenVINO element type names -> v2 datatype.
_OV_TO_V2 = {
    "boolean": "BOOL", "u8": "UINT8", "u16": "UINT16", "u32": "UINT32", "u64": "UINT64",
    "i8": "INT8", "i16": "INT16", "i32": "INT32", "i64": "INT64", "f16": "FP16", "f32": "FP32",
    "f64": "FP64", "bf16": "BF16", "string": "BYTES",
}
_VIRTUAL = ("AUTO", "HETERO", "MULTI", "BATCH")
# Properties with a typed option; setting them through `config` too would make two sources of truth.
_TYPED = {"INFERENCE_PRECISION_HINT": "precision", "PERFORMANCE_HINT": "performance_hint",
          "NUM_STREAMS": "num_streams", "INFERENCE_NUM_THREADS": "inference_num_threads", "CACHE_DIR": "cache_dir"}


class OpenVINOOptions(BackendOptions):
    """Options of the OpenVINO backend."""

    device: str = Field("CPU", description="OpenVINO device: CPU, GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU, "
                        "HETERO:GPU,CPU, MULTI:GPU,CPU. Plain devices are verified after compilation.")
    precision: Literal["f32", "bf16", "f16", "auto"] = Field(
        "f32", description="INFERENCE_PRECISION_HINT. f32 by default because OpenVINO picks bf16 on CPUs with "
        "AVX512-BF16/AMX (and f16 on GPUs), which costs ~1e-3 of parity; 'auto' keeps OpenVINO's default.")
    performance_hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] | None = Field(
        None, description="PERFORMANCE_HINT; None keeps the device default (LATENCY on CPU).")
    num_streams: int | None = Field(None, ge=1, description="NUM_STREAMS: parallel execution streams.")
    inference_num_threads: int | None = Field(
        None, ge=1, description="INFERENCE_NUM_THREADS on CPU (split across instances when unset).")
    cache_dir: str | None = Field(None, description="CACHE_DIR: compiled blobs are cached here, which "
                                  "makes GPU/NPU loads after the first much faster.")
    config: dict[str, str] = Field(default_factory=dict, description="Extra raw OpenVINO properties, "
                                   "e.g. {EXECUTION_MODE_HINT: ACCURACY}; passed to compile_model as given.")

    @field_validator("config", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        # YAML turns `NUM_REQUESTS: 4` into an int and `YES` into True; OpenVINO wants strings.
        if isinstance(value, dict):
            return {k: ("YES" if v else "NO") if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
                    for k, v in value.items()}
        return value

    @field_validator("config")
    @classmethod
    def _no_typed_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.upper() in _TYPED:
                raise ValueError(f"{key} has a typed option; set '{_TYPED[key.upper()]}' instead")
        return value


@functools.cache
def _core():
    # One Core per process: it is thread-safe, and each Core loads every device plugin again.
    import openvino

    return openvino.Core()


def _split(device: str) -> tuple[str, list[str]]:
    """'HETERO:GPU,CPU' -> ('HETERO', ['GPU', 'CPU']); 'GPU.1' -> ('GPU.1', [])."""
    head, _, tail = device.partition(":")
    if head.upper() not in _VIRTUAL:
        return device, []
    # '-CPU' excludes a device from AUTO; 'GPU(4)' is BATCH's batch size.
    listed = [re.sub(r"\(.*\)$", "", d.strip()) for d in tail.split(",")]
    return head.upper(), [d for d in listed if d and not d.startswith("-")]


def _same_device(requested: str, actual: str) -> bool:
    """'GPU' matches GPU, GPU.0 and GPU.1; 'GPU.1' only GPU.1; 'GPU.0' also a lone 'GPU'."""
    r_base, _, r_idx = requested.upper().partition(".")
    a_base, _, a_idx = actual.upper().strip("()").partition(".")
    return r_base == a_base and (not r_idx or r_idx == (a_idx or "0"))


def _message(exc: Exception) -> str:
    """OpenVINO's exception text without its 'Exception from src/...cpp:NN:' lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
    return " ".join(lines) or type(exc).__name__


def _spec(port, declared: dict[str, TensorSpec]) -> TensorSpec:
    name = port.get_any_name()
    datatype = _OV_TO_V2.get(port.get_element_type().get_type_name())
    if datatype is None:
        raise BackendUnavailable(f"tensor '{name}' has element type {port.get_element_type().get_type_name()}, "
                                 f"which has no v2 datatype; expected one of {', '.join(_OV_TO_V2)}")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        if name not in declared:
            raise BackendUnavailable(f"tensor '{name}' has a dynamic rank; declare its shape in the model config")
        return TensorSpec(name=name, datatype=datatype, shape=declared[name].shape)
    return TensorSpec(name=name, datatype=datatype, shape=tuple(d.get_length() if d.is_static else -1 for d in shape))


class OpenVINOBackend(Backend[OpenVINOOptions]):
    """ONNX and OpenVINO IR models on OpenVINO devices, with verified device and precision."""

    name = "openvino"
    Options = OpenVINOOptions
    formats = (".xml", ".onnx")  # IR first: it is already converted, so it loads faster

    def __init__(self) -> None:
        # openvino objects are Any here: openvino is imported lazily, in the worker thread.
        self._compiled: Any = None
        self._request: Any = None
        self._options: OpenVINOOptions | None = None
        self._output_names: list[str] = []

    @classmethod
    def version(cls) -> str:
        import openvino

        # "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1": the build suffix only bloats metric labels.
        return (getattr(openvino, "__version__", None) or openvino.get_version()).split("-")[0]

    @classmethod
    def accelerators(cls) -> dict[str, BackendOptions]:
        # NPUs compute in f16 at best; asking them for f32 would fail verification.
        return {"gpu": OpenVINOOptions(device="GPU"), "npu": OpenVINOOptions(device="NPU", precision="f16")}

    @classmethod
    def probe(cls, options: OpenVINOOptions) -> str | None:
        try:
            available = list(_core().available_devices)
        except Exception as exc:
            return f"openvino {cls.version()} could not list devices: {_message(exc)}"
        kind, listed = _split(options.device)
        needed = listed if kind in _VIRTUAL else [options.device]
        missing = [d for d in needed if not any(_same_device(d, a) for a in available)]
        if missing:
            return (f"openvino {cls.version()} has no device {', '.join(missing)} (available: "
                    f"{', '.join(available) or 'none'}); install that device's driver or pick another device")
        return None

    @classmethod
    def tune_for_instances(cls, options: OpenVINOOptions, instances: int) -> OpenVINOOptions:
        # N compiled models each sized to every core would oversubscribe the CPU N times over.
        if cpu_sharers(instances) > 1 and options.inference_num_threads is None and _same_device("CPU", options.device):
            return options.model_copy(update={"inference_num_threads": threads_per_instance(instances)})
        return options

    @staticmethod
    def _properties(options: OpenVINOOptions) -> dict[str, Any]:
        props: dict[str, Any] = {}
        if options.precision != "auto":
            props["INFERENCE_PRECISION_HINT"] = options.precision
        if options.performance_hint:
            props["PERFORMANCE_HINT"] = options.performance_hint
        if options.num_streams is not None:
            props["NUM_STREAMS"] = str(options.num_streams)
        if options.inference_num_threads is not None:
            props["INFERENCE_NUM_THREADS"] = str(options.inference_num_threads)
        if options.cache_dir:
            props["CACHE_DIR"] = options.cache_dir
        return props | options.config

    def _load(self, artifact: Path, options: OpenVINOOptions, declared: Signature | None) -> Signature:
        core = _core()
        try:
            model = core.read_model(str(artifact))
            # No reshape: dynamic dims stay dynamic, so any batch size and sequence length runs.
            compiled = core.compile_model(model, options.device, self._properties(options))
        except Exception as exc:
            raise BackendUnavailable(f"openvino could not compile {artifact.name} for {options.device}: "
                                     f"{_message(exc)}") from exc
        executing = _execution_devices(compiled)
        kind, listed = _split(options.device)
        # AUTO may pick any of its candidates (and starts on CPU while a GPU compiles); HETERO and
        # MULTI must at least use their first device, else the "fallback" silently became the whole run.
        wanted = [] if kind == "AUTO" else listed[:1] if kind in _VIRTUAL else [options.device]
        if wanted and not any(_same_device(wanted[0], d) for d in executing):
            raise BackendUnavailable(f"openvino compiled {artifact.name} for {options.device} but it executes on "
                                     f"{', '.join(executing) or 'nothing'}; refusing to run on another device")
        precision = _precision(compiled)
        if options.precision == "f32" and precision != "f32":
            raise BackendUnavailable(f"openvino was asked for f32 on {options.device} but the compiled model runs "
                                     f"{precision}; use precision: auto to accept it")
        given = {s.name: s for s in (declared.inputs + declared.outputs)} if declared else {}
        signature = Signature(inputs=tuple(_spec(p, given) for p in compiled.inputs),
                              outputs=tuple(_spec(p, given) for p in compiled.outputs))
        self._compiled, self._options = compiled, options
        self._output_names = signature.output_names()
        # One request per instance: an instance is only ever used by its own worker thread.
        self._request = compiled.create_infer_request()
        return signature

    def run(self, inputs: Tensors) -> Tensors:
        # share_outputs=False copies each output out of the request's buffers, which the next infer() reuses.
        results = self._request.infer(inputs, share_outputs=False)
        return {name: results[i] for i, name in enumerate(self._output_names)}

    def describe(self) -> dict[str, str]:
        runtime = f"openvino {self.version()}"
        if self._compiled is None or self._options is None:
            return {"device": "none", "runtime": runtime}
        return {"device": ",".join(d.strip("()").lower() for d in _execution_devices(self._compiled)),
                "requested_device": self._options.device, "precision": _precision(self._compiled),
                "runtime": runtime}

    def close(self) -> None:
        self._request = None
        self._compiled = None


def _execution_devices(compiled) -> list[str]:
    try:
        return [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
    except Exception:
        return []


def _precision(compiled) -> str:
    """INFERENCE_PRECISION_HINT as compiled: 'f32', or 'CPU=f32,GPU=f16' across a virtual device's members."""
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # AUTO, HETERO and MULTI only report it per underlying device
        pass
    try:
        per_device = {dev: props["INFERENCE_PRECISION_HINT"].get_type_name()
                      for dev, props in compiled.get_property("DEVICE_PROPERTIES").items()
                      if "INFERENCE_PRECISION_HINT" in props}
    except Exception:
        return "unknown"
    if len(set(per_device.values())) == 1:
        return next(iter(per_device.values()))
    return ",".join(f"{dev}={p}" for dev, p in per_device.items()) or "unknown"
