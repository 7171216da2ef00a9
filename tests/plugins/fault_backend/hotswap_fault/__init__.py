"""Test plugin backend `fault`: a real onnxruntime CPU session with faults injected on demand.

It answers exactly like `onnxruntime` on CPU until its options say otherwise:

    {name: fault, mode: raise, after: 5}            # the 6th and later calls raise (a device error)
    {name: fault, mode: hang, hang_s: 30}           # every call sleeps 30 s, then answers (a hung device)
    {name: fault, mode: slow, delay_ms: 50}         # every call is 50 ms slower
    {name: fault, mode: nan}                        # every output is NaN
    {name: fault, mode: perturb, perturb: 0.01}     # every float output + 0.01 (numerical drift)
    {name: fault, mode: raise, while_file: /tmp/x}  # faulty only while /tmp/x exists ("repair" = delete it)

`after` counts this instance's calls, so a freshly loaded instance starts healthy again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from hotswap.backends.base import Backend, BackendOptions
from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.models.signature import Signature, Tensors


class FaultOptions(BackendOptions):
    """Which fault to inject, from which call on, and while which file exists."""

    mode: Literal["none", "raise", "hang", "slow", "nan", "perturb"] = Field(
        "none", description="The fault: raise a device error, hang, slow down, NaN or perturbed outputs.")
    after: int = Field(0, ge=0, le=10**9, description="Calls answered normally before the fault starts.")
    hang_s: float = Field(30.0, ge=0, le=600, description="How long a hung call sleeps (then it answers).")
    delay_ms: float = Field(0.0, ge=0, le=60_000, description="Extra time per call in mode slow.")
    perturb: float = Field(0.01, ge=-1e6, le=1e6, description="Added to every float output in mode perturb.")
    while_file: Path | None = Field(None, description="Inject only while this file exists.")
    threads: int | None = Field(None, ge=1, le=256, description="onnxruntime intra-op threads (default: ORT's).")
    fail_load_while_file: bool = Field(False, description="Also refuse to load while `while_file` exists "
                                       "(a device that is still broken when probed).")


class FaultBackend(Backend[FaultOptions]):
    """onnxruntime CPU underneath; faults injected by options."""

    name = "fault"
    Options = FaultOptions
    formats = (".onnx",)

    def __init__(self) -> None:
        self._inner = OnnxRuntimeBackend()
        self._options = FaultOptions()
        self._calls = 0
        self._closed = threading.Event()  # wakes a hung call when the instance is closed

    @classmethod
    def version(cls) -> str:
        return f"fault 0.1.0 over {OnnxRuntimeBackend.version()}"

    @classmethod
    def probe(cls, options: FaultOptions) -> str | None:
        return OnnxRuntimeBackend.probe(OnnxRuntimeBackend.Options())

    def _load(self, artifact: Path, options: FaultOptions, declared: Signature | None) -> Signature:
        if options.fail_load_while_file and self._active(options):
            raise RuntimeError(f"injected load failure ({options.while_file} exists)")
        self._options = options
        return self._inner.load(artifact, OnnxRuntimeBackend.Options(intra_op_threads=options.threads), declared)

    def _active(self, options: FaultOptions) -> bool:
        return options.while_file is None or options.while_file.exists()

    def run(self, inputs: Tensors) -> Tensors:
        self._calls += 1
        opts = self._options
        faulty = opts.mode != "none" and self._calls > opts.after and self._active(opts)
        if faulty and opts.mode == "raise":
            raise RuntimeError(f"injected device fault on call {self._calls}")
        if faulty and opts.mode == "hang":
            self._closed.wait(opts.hang_s)
        if faulty and opts.mode == "slow":
            time.sleep(opts.delay_ms / 1000)
        outputs = self._inner.run(inputs)
        if faulty and opts.mode in ("nan", "perturb"):
            shift = np.nan if opts.mode == "nan" else opts.perturb
            outputs = {k: (v + np.asarray(shift, v.dtype)) if v.dtype.kind == "f" else v for k, v in outputs.items()}
        return outputs

    def describe(self) -> dict[str, str]:
        return {**self._inner.describe(), "device": "fault-cpu", "runtime": self.version()}

    def close(self) -> None:
        self._closed.set()
        self._inner.close()
