"""torch backend: TorchScript and torch.export programs on any torch device.

Device handling is generic: the device string's type names a torch submodule
(`torch.cuda`, `torch.xpu`, `torch.mps`, `torch.npu` once torch_npu is imported), and
`torch.accelerator` gives synchronisation and memory stats where the torch version has it.
Vendor extensions that are not part of torch itself (torch_npu for Ascend) are imported
lazily in the worker thread, with `SystemExit` from a missing driver turned into a reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from hotswap.backends.base import Backend, BackendOptions, cpu_sharers, threads_per_instance
from hotswap.errors import BackendUnavailable
from hotswap.models.signature import Signature, Tensors, TensorSpec

_DEVICE_RE = re.compile(r"^(?P<type>[a-z_]+)(?::(?P<index>\d+))?$")
#: Device types that need a separate extension package imported before torch knows them.
_EXTENSIONS = {"npu": ("torch_npu", "pip install torch-npu (matching torch) and install Ascend CANN")}
_TORCH_TO_V2 = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "float64": "FP64", "int64": "INT64",
                "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}


class TorchOptions(BackendOptions):
    """Options of the torch backend."""

    device: str = Field("cpu", description="Any torch device string: cpu, cuda:0, npu:0, xpu, mps.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Compute precision; floating inputs are cast to it and outputs back to FP32.")
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads for CPU compute "
                                "(process-wide; split across instances when unset).")
    verify: bool = Field(True, description="After loading, check that parameters and a warm-up output "
                         "are on the requested device.")

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError("expected a torch device string like 'cpu', 'cuda:0' or 'npu:0'")
        return value


def _split_device(device: str) -> tuple[str, int | None]:
    match = _DEVICE_RE.match(device)
    if match is None:  # TorchOptions validates the syntax; this guards options built without validation
        raise ValueError(f"'{device}' is not a torch device string like 'cpu', 'cuda:0' or 'npu:0'")
    index = match["index"]
    return match["type"], int(index) if index is not None else None


def _import_extension(device_type: str) -> str | None:
    """Import the vendor extension for `device_type`; the reason it failed, or None."""
    if device_type not in _EXTENSIONS:
        return None
    module, hint = _EXTENSIONS[device_type]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed, so torch has no '{device_type}' device ({hint})"
    try:
        importlib.import_module(module)
    except SystemExit as exc:
        return f"importing {module} called sys.exit({exc.code}): the vendor driver/toolkit is missing ({hint})"
    except Exception as exc:
        return f"importing {module} failed: {type(exc).__name__}: {exc} ({hint})"
    return None


class TorchBackend(Backend[TorchOptions]):
    """TorchScript (.pt, .ts) and torch.export (.pt2) programs under torch.inference_mode."""

    name = "torch"
    Options = TorchOptions
    formats = (".pt2", ".pt", ".ts", ".torchscript")

    def __init__(self) -> None:
        # torch types are Any here: torch is imported lazily, in the worker thread.
        self._module: Any = None
        self._options: TorchOptions | None = None
        self._device: Any = None
        self._dtype: Any = None
        self._input_names: list[str] = []
        self._output_names: list[str] = []

    @classmethod
    def version(cls) -> str:
        import torch

        return torch.__version__

    @classmethod
    def accelerators(cls) -> dict[str, BackendOptions]:
        return {kind: TorchOptions(device=f"{kind}:0") for kind in ("cuda", "npu", "xpu", "mps")}

    @classmethod
    def probe(cls, options: TorchOptions) -> str | None:
        import torch

        device_type, index = _split_device(options.device)
        if device_type == "cpu":
            return None
        reason = _import_extension(device_type)
        if reason:
            return reason
        module = getattr(torch, device_type, None)
        if module is None or not hasattr(module, "is_available"):
            return f"torch {torch.__version__} has no '{device_type}' device type"
        # is_available()/device_count() query the driver without creating a context.
        if not module.is_available():
            built = f", built with CUDA {torch.version.cuda}" if device_type == "cuda" else ""
            return f"torch {torch.__version__}{built}: no {device_type} device is available (no device or driver)"
        count = module.device_count() if hasattr(module, "device_count") else 1
        if index is not None and index >= count:
            return f"{options.device} does not exist: {count} {device_type} device(s) visible"
        if options.dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
            return f"{options.device} does not support bfloat16"
        return None

    @classmethod
    def tune_for_instances(cls, options: TorchOptions, instances: int) -> TorchOptions:
        # torch's CPU thread pool is process-wide: size it for all instances together.
        if cpu_sharers(instances) > 1 and options.threads is None and options.device == "cpu":
            return options.model_copy(update={"threads": threads_per_instance(instances)})
        return options

    def _load(self, artifact: Path, options: TorchOptions, declared: Signature | None) -> Signature:
        import torch

        device = torch.device(options.device)
        dtype = getattr(torch, options.dtype)
        if options.threads:
            torch.set_num_threads(options.threads)
        if artifact.suffix == ".pt2":
            program = torch.export.load(str(artifact))
            signature = declared or _export_signature(program)
            module = _module_on(program, device)
        else:
            if declared is None:
                raise BackendUnavailable(f"{artifact.name} is TorchScript, which carries no tensor names: "
                                         "declare `inputs` and `outputs` in the model config")
            signature = declared
            module = torch.jit.load(str(artifact), map_location=device)
            module.eval()
        if dtype != torch.float32:
            module = module.to(dtype)
        self._module, self._options, self._device, self._dtype = module, options, device, dtype
        self._input_names = [s.name for s in signature.inputs]
        self._output_names = signature.output_names()
        if options.verify:
            self._verify(device, signature)
        return signature

    def _verify(self, device: Any, signature: Signature) -> None:
        """Parameters and a warm-up output must be on `device`: never a silent CPU run."""
        wrong = {str(p.device) for p in self._module.parameters() if p.device.type != device.type}
        if wrong:
            raise BackendUnavailable(f"torch module parameters are on {sorted(wrong)}, not {device}")
        warm = {s.name: s.example() for s in signature.inputs}
        try:
            raw = self._forward(warm)
        except Exception as exc:
            raise BackendUnavailable(f"warm-up on {device} failed: {type(exc).__name__}: {exc}") from exc
        off = {str(t.device) for t in raw if t.device.type != device.type}
        if off:
            raise BackendUnavailable(f"warm-up output was on {sorted(off)}, not {device}")

    def _forward(self, inputs: Tensors) -> list:
        import torch

        args = []
        for name in self._input_names:
            array = inputs[name]
            if not array.flags.writeable:  # binary request bodies arrive as read-only views
                array = array.copy()
            tensor = torch.from_numpy(array).to(self._device, non_blocking=True)
            if tensor.is_floating_point() and tensor.dtype != self._dtype:
                tensor = tensor.to(self._dtype)
            args.append(tensor)
        with torch.inference_mode():
            out = self._module(*args)
        if isinstance(out, dict):
            return [out[name] for name in self._output_names]
        if isinstance(out, (tuple, list)):
            return list(out)
        return [out]

    def run(self, inputs: Tensors) -> Tensors:
        import torch

        try:
            raw = self._forward(inputs)
        except torch.jit.Error as exc:
            # TorchScript appends its interpreter traceback with the model's source; the
            # client needs the last line (the error raised inside the model).
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise RuntimeError(lines[-1].strip() if lines else "TorchScript error") from exc
        results = {}
        for name, tensor in zip(self._output_names, raw):
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                tensor = tensor.float()
            results[name] = tensor.cpu().numpy()  # .cpu() synchronises the device
        return results

    def describe(self) -> dict[str, str]:
        import torch

        info = {"device": str(self._device) if self._device is not None else "none",
                "precision": self._options.dtype if self._options else "none",
                "runtime": f"torch {torch.__version__}"}
        if self._module is not None:
            first = next(iter(self._module.parameters()), None)
            if first is not None:
                info["device"] = str(first.device)
        return info

    def compute_threads(self) -> int | None:
        return self._options.threads if self._options is not None else None

    def memory_bytes(self) -> int | None:
        """Bytes allocated on the accelerator, where torch.accelerator reports it."""
        import torch

        if self._device is None or self._device.type == "cpu":
            return None
        memory = getattr(getattr(torch, "accelerator", None), "memory_allocated", None)
        try:
            return int(memory(self._device)) if memory else None
        except Exception:
            return None

    def close(self) -> None:
        self._module = None


def _module_on(program: Any, device: Any) -> Any:
    """The exported program as a module on `device`, with the devices its graph names moved too.

    `module().to(device)` moves weights only: a graph exported on CPU keeps `device=cpu` in the
    tensors it creates (MiniLM's position ids, its attention mask), and fails on a GPU with a
    device mismatch. torch.export.passes rewrites those too; a torch without it moves weights only.
    """
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # pragma: no cover - an older torch
        return program.module().to(device)
    return move_to_device_pass(program, device).module()


def _export_signature(program) -> Signature:
    """Inputs/outputs of a torch.export program from its placeholder metadata."""
    from torch.export.graph_signature import InputKind

    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for name in user_inputs:
        val = nodes[name].meta["val"]
        shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
        inputs.append(TensorSpec(name=name, datatype=_TORCH_TO_V2[str(val.dtype).removeprefix("torch.")],
                                 shape=shape))
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = []
    for i, node in enumerate(output_node.args[0]):
        val = node.meta["val"]
        shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
        outputs.append(TensorSpec(name=f"output_{i}", datatype=_TORCH_TO_V2[str(val.dtype).removeprefix("torch.")],
                                  shape=shape))
    return Signature(inputs=tuple(inputs), outputs=tuple(outputs))
