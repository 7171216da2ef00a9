"""onnxruntime backend: ordered execution providers, no silent CPU fallback.

onnxruntime falls back to CPU in four places: an unavailable provider is only a
warning, a failed session creation is retried on CPU, an execution-provider failure
during run() is retried on CPU, and a provider that is active but takes none of the
graph's nodes leaves every node to the CPU provider that onnxruntime always appends.
This backend disables the two retries, checks the active providers against the ones asked
for, and reads back where onnxruntime placed each node: a request for an accelerator whose
nodes would all run on CPU fails at load, naming the provider, instead of serving on CPU
while reporting the accelerator. describe() reports the real placement (`nodes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from hotswap.backends.base import Backend, BackendOptions, cpu_sharers, threads_per_instance
from hotswap.errors import BackendUnavailable, InvalidInput
from hotswap.models.signature import Signature, Tensors, TensorSpec

# ONNX tensor element type names as onnxruntime reports them -> v2 datatype.
_ORT_TO_V2 = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16", "tensor(string)": "BYTES",
}
CPU = "CPUExecutionProvider"
#: Session config key that makes onnxruntime record which provider runs each node (older versions ignore it).
RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class ExecutionProvider(BackendOptions):
    """One onnxruntime execution provider and its provider options."""

    name: str = Field(description="Provider name, e.g. CUDAExecutionProvider, CANNExecutionProvider.")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Provider options, e.g. {device_id: 0}.")


class OnnxRuntimeOptions(BackendOptions):
    """Options of the onnxruntime backend.

    `cpu_mem_arena` (default false) keeps onnxruntime's CPU memory arena: with it, the memory a
    burst of large batches needed stays reserved by the process afterwards (the arena only
    grows); without it, each run's buffers go back to the allocator once the run ends.
    """

    providers: list[ExecutionProvider] = Field(
        default_factory=lambda: [ExecutionProvider(name="CPUExecutionProvider")],
        description="Ordered providers; a plain name or {name, options}. All must be active.")
    strict: bool = Field(False, description="Set session.disable_cpu_ep_fallback: nodes the "
                         "accelerator cannot run fail the load instead of running on CPU.")
    intra_op_threads: int | None = Field(None, ge=0, description="Threads inside one op (0/None = ORT default; "
                                         "split across instances when unset).")
    inter_op_threads: int | None = Field(None, ge=0, description="Threads across ops (parallel mode).")
    allow_spinning: bool = Field(True, description="Let ORT's idle pool threads spin-wait for work. Faster "
                                 "alone; off gives the cores back to the HTTP loop and other instances sooner.")
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ORT graph optimisations.")
    cpu_mem_arena: bool = Field(False, description="Keep ORT's CPU memory arena: fewer allocator calls, "
                                "but the peak of a burst of large batches stays held by the process.")

    @field_validator("providers", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


def _as_str_array(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime string tensors take str; it would str() a bytes element into "b'...'"."""
    flat = array.ravel()
    try:
        decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{name}': element is not valid UTF-8 ({exc.reason}); "
                           "expected UTF-8 text for a string tensor") from None
    return np.array(decoded, dtype=object).reshape(array.shape)


def _v2(ort_type: str) -> str:
    return _ORT_TO_V2.get(ort_type, ort_type)


def _dims(shape: list) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def node_placement(session: Any) -> dict[str, int]:
    """Nodes per execution provider as onnxruntime assigned them; {} where it cannot say.

    Needs RECORD_PLACEMENT set on the session and an onnxruntime with
    `get_provider_graph_assignment_info`; older versions give {} and only the active
    provider list is checked.
    """
    read = getattr(session, "get_provider_graph_assignment_info", None)
    if read is None:
        return {}
    placement: dict[str, int] = {}
    for subgraph in read():
        placement[subgraph.ep_name] = placement.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return placement


def check_placement(requested: list[str], active: list[str], placement: dict[str, int]) -> None:
    """Refuse a session that would not run where `requested` says.

    Every requested provider must be active; and when accelerators were requested, at least
    one of them must run nodes. An active accelerator that takes no node (onnxruntime has
    no kernel for it, e.g. AzureExecutionProvider on an ordinary graph) leaves the whole
    graph to the CPU provider onnxruntime appends: that is a CPU run, refused here.
    """
    missing = [name for name in requested if name not in active]
    if missing:
        raise BackendUnavailable(f"onnxruntime did not activate {', '.join(missing)} "
                                 f"(active: {', '.join(active)}); refusing to run on another device")
    accelerators = [name for name in requested if name != CPU]
    if not accelerators or not placement or any(placement.get(name) for name in accelerators):
        return
    where = ", ".join(f"{count} on {name}" for name, count in placement.items())
    raise BackendUnavailable(f"onnxruntime activated {', '.join(accelerators)} but assigned it none of the "
                             f"model's {sum(placement.values())} nodes ({where}); refusing to report "
                             f"{accelerators[0]} while every node runs elsewhere")


class OnnxRuntimeBackend(Backend[OnnxRuntimeOptions]):
    """ONNX models on onnxruntime with explicit, verified execution providers."""

    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    formats = (".onnx",)
    inline_safe = True  # InferenceSession.run is thread-safe and keeps no per-thread state

    def __init__(self) -> None:
        self._session: Any = None  # an InferenceSession; onnxruntime is imported lazily, in the worker thread
        self._options: OnnxRuntimeOptions | None = None
        self._placement: dict[str, int] = {}
        self._output_names: list[str] = []
        self._string_inputs: list[str] = []

    @classmethod
    def version(cls) -> str:
        import onnxruntime

        return onnxruntime.__version__

    @classmethod
    def accelerators(cls) -> dict[str, BackendOptions]:
        return {kind: OnnxRuntimeOptions(providers=[ExecutionProvider(name=p)]) for kind, p in (
            ("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"),
            ("ascend", "CANNExecutionProvider"), ("openvino", "OpenVINOExecutionProvider"),
            ("rocm", "ROCMExecutionProvider"), ("directml", "DmlExecutionProvider"))}

    @classmethod
    def probe(cls, options: OnnxRuntimeOptions) -> str | None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        missing = [p.name for p in options.providers if p.name not in available]
        if missing:
            return (f"onnxruntime {onnxruntime.__version__} has no {', '.join(missing)} "
                    f"(available: {', '.join(available)}); install the onnxruntime build for that device")
        return None

    @classmethod
    def tune_for_instances(cls, options: OnnxRuntimeOptions, instances: int) -> OnnxRuntimeOptions:
        # N sessions each sized to every core would oversubscribe the CPU N times over.
        if cpu_sharers(instances) > 1 and options.intra_op_threads is None:
            return options.model_copy(update={"intra_op_threads": threads_per_instance(instances)})
        return options

    def _session_options(self, options: OnnxRuntimeOptions):
        import onnxruntime

        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                              _OPT_LEVELS[options.graph_optimization_level])
        if options.intra_op_threads is not None:
            so.intra_op_num_threads = options.intra_op_threads
        if not options.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.enable_cpu_mem_arena = options.cpu_mem_arena
        so.add_session_config_entry(RECORD_PLACEMENT, "1")
        if options.inter_op_threads is not None:
            so.inter_op_num_threads = options.inter_op_threads
            so.execution_mode = onnxruntime.ExecutionMode.ORT_PARALLEL
        # With CPUExecutionProvider requested, CPU is allowed by name and onnxruntime rejects the
        # combination ("Conflicting session configuration"): strict only applies without it.
        if options.strict and CPU not in {p.name for p in options.providers}:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return so

    def _load(self, artifact: Path, options: OnnxRuntimeOptions, declared: Signature | None) -> Signature:
        import onnxruntime

        providers = [(p.name, {k: str(v) for k, v in p.options.items()}) for p in options.providers]
        try:
            session = onnxruntime.InferenceSession(str(artifact), sess_options=self._session_options(options),
                                                   providers=providers, enable_fallback=0)
        except Exception as exc:
            raise BackendUnavailable(f"onnxruntime could not create a session for {artifact.name} with "
                                     f"{[p.name for p in options.providers]}: {exc}") from exc
        session.disable_fallback()  # already off via enable_fallback=0; kept so a refactor cannot lose it
        placement = node_placement(session)
        check_placement([p.name for p in options.providers], session.get_providers(), placement)
        signature = Signature(
            inputs=tuple(TensorSpec(name=i.name, datatype=_v2(i.type), shape=_dims(i.shape))
                         for i in session.get_inputs()),
            outputs=tuple(TensorSpec(name=o.name, datatype=_v2(o.type), shape=_dims(o.shape))
                          for o in session.get_outputs()),
        )
        self._session, self._options, self._placement = session, options, placement
        self._output_names = signature.output_names()
        self._string_inputs = [s.name for s in signature.inputs if s.datatype == "BYTES"]
        return signature

    def run(self, inputs: Tensors) -> Tensors:
        for name in self._string_inputs:
            inputs = inputs | {name: _as_str_array(name, inputs[name])}
        results = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results))

    def compute_threads(self) -> int | None:
        # Set inter-op threads run whole nodes side by side (parallel mode); 0 intra-op threads is ORT's default.
        if self._options is None or self._options.inter_op_threads is not None:
            return None
        return self._options.intra_op_threads or None

    def describe(self) -> dict[str, str]:
        if self._session is None:
            return {"device": "none", "runtime": f"onnxruntime {self.version()}"}
        active = self._session.get_providers()
        options = self._session.get_provider_options()  # keyed by provider, not in `active` order
        device = "cpu"
        for provider in active:
            # The device is the first accelerator that runs nodes (any active one where ORT cannot say).
            if provider != CPU and (not self._placement or self._placement.get(provider)):
                device_id = options.get(provider, {}).get("device_id", "0")
                device = f"{provider.removesuffix('ExecutionProvider').lower()}:{device_id}"
                break
        nodes = ",".join(f"{name}={count}" for name, count in self._placement.items()) or "unknown"
        return {"device": device, "providers": ",".join(active), "nodes": nodes, "precision": "as exported",
                "runtime": f"onnxruntime {self.version()}"}

    def close(self) -> None:
        self._session = None
