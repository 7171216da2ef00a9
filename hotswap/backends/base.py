"""The Backend contract: everything a hardware backend implements, built-in or plugin.

A backend is a small synchronous class. The runner creates one instance per configured
`instances`, gives each its own worker thread, and calls:

    reason = Backend.probe(options)          # str: why it cannot run here; None: it can
    backend = Backend()
    signature = backend.load(artifact, options, declared)   # may raise BackendUnavailable
    outputs = backend.infer({"x": array})    # batched on dim 0; validates, then run()
    backend.describe()                       # {"device": "cuda:0", "providers": ..., "precision": ...}
    backend.close()                          # idempotent

Subclasses implement `probe`, `load`, `run`, `describe` and `close`; `infer` checks the
inputs against the loaded signature first, so every backend rejects a missing input, a
wrong dtype or a wrong rank with the same `InvalidInput` message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from hotswap.errors import BackendError, InvalidInput
from hotswap.models.signature import Signature, Tensors


class BackendOptions(BaseModel):
    """Base of every backend's typed options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid")


class Backend(ABC):
    """One loaded model on one device. Synchronous; one worker thread per instance."""

    #: Name used in config (`backends: [{name: ...}]`) and in metric labels.
    name: ClassVar[str]
    #: The typed options this backend accepts.
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: Artifact file suffixes this backend can load, most preferred first (".onnx", ".pt").
    formats: ClassVar[tuple[str, ...]] = ()

    signature: Signature | None = None

    @classmethod
    def version(cls) -> str:
        """Version of the runtime underneath (torch, onnxruntime, ...)."""
        return "unknown"

    @classmethod
    @abstractmethod
    def probe(cls, options: BackendOptions) -> str | None:
        """Why this backend cannot run with `options` here, or None if it can.

        Must not initialise a device: it runs in the server process before workers exist.
        """

    @classmethod
    def accelerators(cls) -> dict[str, BackendOptions]:
        """Example options per accelerator kind, for `hotswap backends` to probe."""
        return {}

    @classmethod
    def tune_for_instances(cls, options: BackendOptions, instances: int) -> BackendOptions:
        """Options for one of `instances` instances sharing this machine (e.g. split CPU threads)."""
        return options

    @abstractmethod
    def load(self, artifact: Path, options: BackendOptions, declared: Signature | None = None) -> Signature:
        """Load `artifact` and return the signature served.

        `declared` is the signature from config; formats that carry their own (ONNX) check
        it against the artifact, formats that do not (TorchScript) require it.
        Raises BackendUnavailable when the device or runtime does not do what was asked.
        """

    @abstractmethod
    def run(self, inputs: Tensors) -> Tensors:
        """Run one batch of already-validated inputs; return every output."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """What really runs: at least `device`; also providers, precision, runtime version."""

    @abstractmethod
    def close(self) -> None:
        """Free the model and device memory. Calling it twice is harmless."""

    def infer(self, inputs: Tensors) -> Tensors:
        """Validate `inputs` against the loaded signature, then run them."""
        if self.signature is None:
            raise BackendError(f"backend '{self.name}' has no model loaded")
        self.signature.check_inputs(inputs)
        try:
            return self.run(inputs)
        except InvalidInput:
            raise
        except Exception as exc:  # the runtime's message is what the client needs
            raise BackendError(f"backend '{self.name}' failed: {type(exc).__name__}: {exc}") from exc
