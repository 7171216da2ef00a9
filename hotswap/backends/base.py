"""The Backend contract: everything a hardware backend implements, built-in or plugin.

A backend is a small synchronous class. The runner creates one instance per configured
`instances`, gives each its own worker thread, and calls:

    reason = Backend.probe(options)          # str: why it cannot run here; None: it can
    options = Backend.tune_for_instances(options, instances)
    backend = Backend()
    backend.load(artifact, options, declared)   # sets backend.signature; may raise BackendUnavailable
    outputs = backend.infer({"x": array})    # batched on dim 0; validates, then run()
    backend.describe()                       # {"device": "cuda:0", "providers": ..., "precision": ...}
    backend.memory_bytes()                   # accelerator bytes in use, or None
    backend.close()                          # idempotent

Subclasses implement `probe`, `_load`, `run`, `describe` and `close`. Two template methods
in this class do the shared work so no backend can skip it: `load` probes again (the probe
ran in another thread, maybe long before), calls `_load`, checks the result against the
declared signature and stores it; `infer` checks the inputs against that signature, so
every backend rejects a missing input, a wrong dtype or a wrong rank with the same
`InvalidInput` message.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Generic, TypeVar, final

from pydantic import BaseModel, ConfigDict

from hotswap.errors import BackendError, BackendUnavailable, InvalidInput
from hotswap.models.signature import Signature, Tensors


class BackendOptions(BaseModel):
    """Base of every backend's typed options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid")


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


#: Set by `hotswap serve --workers N` (serve/workers.py) for its worker processes: N processes
#: share this machine's cores, each with its own instances.
CPU_SHARERS_ENV = "HOTSWAP_CPU_SHARERS"


def cpu_sharers(instances: int) -> int:
    """Instances on this machine competing for its cores: this process's times its sibling workers."""
    try:
        processes = max(1, int(os.environ.get(CPU_SHARERS_ENV, "1")))
    except ValueError:
        processes = 1
    return instances * processes


def threads_per_instance(instances: int) -> int:
    """CPU threads for one of `instances` instances (of every worker process), so together they
    use each core once."""
    return max(1, (os.cpu_count() or 1) // cpu_sharers(instances))


class Backend(ABC, Generic[OptionsT]):
    """One loaded model on one device. Synchronous; one worker thread per instance (calls shorter
    than the thread hop may run on the event loop's thread instead, if `inline_safe`).

    Subclass it as `Backend[MyOptions]` so `probe`, `_load` and `tune_for_instances` take
    `MyOptions`; a plain `Backend` subclass takes any options.
    """

    #: Name used in config (`backends: [{name: ...}]`) and in metric labels.
    name: ClassVar[str]
    #: The typed options this backend accepts.
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: Artifact file suffixes this backend can load, most preferred first (".onnx", ".pt").
    formats: ClassVar[tuple[str, ...]] = ()

    #: `run` may be called from the server's event-loop thread as well as the instance's own (no
    #: per-thread state such as a device context): a fast call then skips the thread hop
    #: (`batching.inline_max_us`).
    inline_safe: ClassVar[bool] = False

    #: What the loaded model serves; None until `load` succeeds.
    signature: Signature | None = None

    @classmethod
    def version(cls) -> str:
        """Version of the runtime underneath (torch, onnxruntime, ...)."""
        return "unknown"

    @classmethod
    @abstractmethod
    def probe(cls, options: OptionsT) -> str | None:
        """Why this backend cannot run with `options` here, or None if it can.

        Must not initialise a device: it runs in the server process before workers exist.
        """

    @classmethod
    def accelerators(cls) -> dict[str, BackendOptions]:
        """Example options per accelerator kind, for `hotswap backends` to probe."""
        return {}

    @classmethod
    def tune_for_instances(cls, options: OptionsT, instances: int) -> OptionsT:
        """Options for one of `instances` instances sharing this machine (e.g. split CPU threads)."""
        return options

    @final
    def load(self, artifact: Path, options: OptionsT, declared: Signature | None = None) -> Signature:
        """Load `artifact`, set `self.signature` and return it. Subclasses implement `_load`.

        `declared` is the signature from config. Raises BackendUnavailable when the probe
        says no, when the device or runtime does not do what was asked, or when the
        artifact's names, datatypes or ranks disagree with `declared`.
        """
        reason = self.probe(options)
        if reason:
            raise BackendUnavailable(reason)
        signature = self._load(artifact, options, declared)
        if declared is not None:
            problem = signature.mismatch(declared, artifact.name)
            if problem:
                raise BackendUnavailable(problem)
        self.signature = signature
        return signature

    @abstractmethod
    def _load(self, artifact: Path, options: OptionsT, declared: Signature | None) -> Signature:
        """Load `artifact` on the device `options` name; return the signature it serves.

        Formats that carry their own signature (ONNX) return it and `load` checks it against
        `declared`; formats that do not (TorchScript) return `declared` and raise
        BackendUnavailable when it is None. Called only after `probe` said yes.
        """

    @abstractmethod
    def run(self, inputs: Tensors) -> Tensors:
        """Run one batch of already-validated inputs; return every output."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """What really runs: at least `device`; also providers, precision, runtime version."""

    def memory_bytes(self) -> int | None:
        """Accelerator memory this instance holds, in bytes, or None where the runtime does not say."""
        return None

    def compute_threads(self) -> int | None:
        """CPU threads one call of this instance computes on, or None where unknown or left to the runtime.

        A CPU instance that says 1 may have its thread pinned to a core of its own (serve/placement.py).
        """
        return None

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
