"""Model-level pre/post-processing: public tensors <-> backend tensors.

A processor turns what clients send (e.g. `text`, BYTES [-1]) into what the backend
runs (`input_ids`, `attention_mask`, ...) and the backend's outputs into what clients
get (`embedding`, FP32 [-1, 384]). Processors are found like backends, through the
entry-point group `hotswap.processors`, and run in the backend instance's worker thread
on a whole batch, so a text batch is tokenised once, padded to its longest row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hotswap.errors import ConfigError
from hotswap.models.signature import Signature, Tensors

ENTRY_POINT_GROUP = "hotswap.processors"


class ProcessorOptions(BaseModel):
    """Base of every processor's typed options; unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid")


class Processor(ABC):
    """Converts a batch of public inputs to backend inputs and backend outputs back."""

    name: ClassVar[str]
    Options: ClassVar[type[ProcessorOptions]] = ProcessorOptions

    def __init__(self, options: ProcessorOptions, base_dir: Path) -> None:
        """`base_dir` resolves relative paths in options (the artifact's folder)."""
        self.options = options
        self.base_dir = base_dir

    @abstractmethod
    def signature(self, backend_signature: Signature) -> Signature:
        """The public signature clients see, given what the backend serves."""

    @abstractmethod
    def preprocess(self, inputs: Tensors) -> Tensors:
        """A batch of public inputs (already checked against `signature`) -> backend inputs."""

    @abstractmethod
    def postprocess(self, backend_inputs: Tensors, outputs: Tensors) -> Tensors:
        """Backend outputs (and the inputs it ran on) -> public outputs, same rows."""


class IdentityProcessor(Processor):
    """No processing: clients send and receive the backend's own tensors."""

    name = "identity"

    def signature(self, backend_signature: Signature) -> Signature:
        return backend_signature

    def preprocess(self, inputs: Tensors) -> Tensors:
        return inputs

    def postprocess(self, backend_inputs: Tensors, outputs: Tensors) -> Tensors:
        return outputs


def make_processor(config, base_dir: Path, where: str = "processor") -> Processor:
    """Build the processor named by a `ProcessorConfig` (None -> identity)."""
    if config is None:
        return IdentityProcessor(ProcessorOptions(), base_dir)
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if config.name not in found:
        raise ConfigError(f"{where}.name: unknown processor '{config.name}'; "
                          f"installed: {', '.join(sorted(found)) or 'none'}")
    cls = found[config.name].load()
    try:
        options = cls.Options.model_validate(dict(config.model_extra or {}))
    except ValidationError as exc:
        from hotswap.models.config import format_validation_error

        raise ConfigError(format_validation_error(exc, where)) from None
    return cls(options, base_dir)
