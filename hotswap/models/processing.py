"""Model-level pre/post-processing: public tensors <-> backend tensors.

A processor turns what clients send (e.g. `text`, BYTES [-1]) into what the backend
runs (`input_ids`, `attention_mask`, ...) and the backend's outputs into what clients
get (`embedding`, FP32 [-1, 384]). Processors are found like backends, through the
entry-point group `hotswap.processors` (`hotswap.plugins.discover`). The runner builds one
per backend instance, already bound to what that instance serves:

    processor = make_processor(config, base_dir, backend.signature, where)
    processor.signature                       # the public signature clients see
    inputs = processor.check(inputs)          # per request, on the event loop, before queueing
    prepared = processor.preprocess(batch)    # per batch, in the instance's worker thread
    outputs = processor.postprocess(prepared, backend.infer(prepared))

`preprocess` and `postprocess` see a whole batch, so a text batch is tokenised once,
padded to its longest row. `check` sees one request: whatever would make a whole batch
fail because of one client (undecodable text) is rejected there, with that client's 400.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hotswap.config import HotswapConfig, ProcessorConfig, format_validation_error
from hotswap.errors import ConfigError
from hotswap.models.signature import Signature, Tensors
from hotswap.plugins import PluginRegistry, discover

ENTRY_POINT_GROUP = "hotswap.processors"


class ProcessorOptions(BaseModel):
    """Base of every processor's typed options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid")


OptionsT = TypeVar("OptionsT", bound=ProcessorOptions)


class Processor(ABC, Generic[OptionsT]):
    """Converts a batch of public inputs to backend inputs and backend outputs back.

    A processor is bound to one backend signature for its whole life: `bind` runs once, in
    `__init__`, so an instance without a public signature cannot exist. Subclasses that need
    their own state in `bind` set it up before calling `super().__init__`.
    """

    name: ClassVar[str]
    Options: ClassVar[type[ProcessorOptions]] = ProcessorOptions
    #: Set by the runner when this instance's thread was pinned to a core of its own (serve/placement.py):
    #: `preprocess` and `postprocess` should then work on the calling thread, not spread over a thread
    #: pool, whose threads would take the cores the other instances own.
    own_core: bool = False

    def __init__(self, options: OptionsT, base_dir: Path, backend_signature: Signature) -> None:
        """`base_dir` resolves relative paths in options (the artifact's folder)."""
        self.options = options
        self.base_dir = Path(base_dir)
        self.backend_signature = backend_signature
        self._signature = self.bind(backend_signature)

    @property
    def signature(self) -> Signature:
        """The public signature clients see."""
        return self._signature

    @abstractmethod
    def bind(self, backend_signature: Signature) -> Signature:
        """Adapt to what the backend serves and return the public signature.

        Raises ConfigError when this processor cannot feed that backend.
        """

    def check(self, inputs: Tensors) -> Tensors:
        """One request's inputs (already checked against `signature`) -> the inputs to queue.

        Runs on the event loop for every request, so it must be cheap; raise InvalidInput for
        what would otherwise fail the whole batch in `preprocess`.
        """
        return inputs

    @abstractmethod
    def preprocess(self, inputs: Tensors) -> Tensors:
        """A batch of public inputs (each request passed `check`) -> backend inputs."""

    @abstractmethod
    def postprocess(self, backend_inputs: Tensors, outputs: Tensors) -> Tensors:
        """Backend outputs (and the inputs it ran on) -> public outputs, same rows."""


class IdentityProcessor(Processor[ProcessorOptions]):
    """No processing: clients send and receive the backend's own tensors."""

    name = "identity"

    def bind(self, backend_signature: Signature) -> Signature:
        return backend_signature

    def preprocess(self, inputs: Tensors) -> Tensors:
        return inputs

    def postprocess(self, backend_inputs: Tensors, outputs: Tensors) -> Tensors:
        return outputs


@dataclass
class ProcessorRegistry(PluginRegistry[Processor]):
    """Processors that imported (`available`) and those that did not (`failed`, name -> error)."""

    group: str = ENTRY_POINT_GROUP
    kind: str = "processor"


def discover_processors(entries: list[EntryPoint] | None = None) -> ProcessorRegistry:
    """Import every processor registered under `hotswap.processors` (or those in `entries`)."""
    found = discover(ENTRY_POINT_GROUP, Processor, None, entries, kind="processor")
    return ProcessorRegistry(available=found.available, failed=found.failed, distributions=found.distributions)


def _not_available(name: str, registry: ProcessorRegistry) -> str:
    if name in registry.failed:
        return f"processor '{name}' failed to import: {registry.failed[name]}"
    return f"unknown processor '{name}'; installed: {', '.join(sorted(registry.available)) or 'none'}"


def make_processor(config: ProcessorConfig | None, base_dir: Path, backend_signature: Signature,
                   where: str = "processor", registry: ProcessorRegistry | None = None) -> Processor:
    """Build the processor named by `config` (None -> identity), bound to `backend_signature`.

    `where` prefixes config errors (`models.m.processor`); `registry` defaults to a fresh
    `discover_processors()`.
    """
    if config is None:
        return IdentityProcessor(ProcessorOptions(), base_dir, backend_signature)
    registry = registry if registry is not None else discover_processors()
    cls = registry.get(config.name)
    if cls is None:
        raise ConfigError(f"{where}.name: {_not_available(config.name, registry)}")
    try:
        options = cls.Options.model_validate(dict(config.model_extra or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    return cls(options, base_dir, backend_signature)


def validate_processor_options(config: HotswapConfig, where: str, registry: ProcessorRegistry | None = None) -> None:
    """Check each model's `processor` (name and options) at config load; errors name `where` and the key path.

    Models without a `processor` key are left alone: their source's default is checked when it loads.
    """
    models = [(i, m.processor) for i, m in enumerate(config.models) if m.processor is not None]
    if not models:
        return  # no plugin import for configs that name no processor
    registry = registry if registry is not None else discover_processors()
    problems = []
    for i, processor in models:
        cls = registry.get(processor.name)
        if cls is None:
            problems.append(f"{where}: models.{i}.processor.name: {_not_available(processor.name, registry)}")
            continue
        try:
            cls.Options.model_validate(dict(processor.model_extra or {}))
        except ValidationError as exc:
            problems.append(format_validation_error(exc, where, ("models", i, "processor")))
    if problems:
        raise ConfigError("\n".join(problems))
