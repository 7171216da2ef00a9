"""Walk a model's backend chain: the first entry that probes and loads wins.

Every entry passed over keeps its reason (not installed, import failed, no artifact in
its format, probe said no, load failed), so metadata, logs and metrics can show why a
model runs where it runs. A chain of one entry is strict: its reason is the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import ValidationError

from hotswap.backends.base import Backend, BackendOptions
from hotswap.backends.registry import BackendRegistry
from hotswap.config import BackendEntry, ModelConfig, format_validation_error
from hotswap.errors import BackendUnavailable
from hotswap.models.sources import ModelSource


@dataclass(frozen=True)
class SkippedEntry:
    """A chain entry that was passed over, and why."""

    position: int
    label: str
    reason: str

    def as_dict(self) -> dict[str, int | str]:
        return {"position": self.position, "backend": self.label, "reason": self.reason}


@dataclass
class Selection:
    """The chain entry that serves the model, and the entries skipped before it."""

    position: int
    entry: BackendEntry
    backend_cls: type[Backend]
    options: BackendOptions
    artifact: Path
    skipped: list[SkippedEntry] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.entry.label()

    @property
    def platform(self) -> str:
        """The v2 platform: backend and artifact format, as `onnxruntime_onnx` or `torch_pt2`."""
        return f"{self.backend_cls.name}_{self.artifact.suffix[1:]}"

    def shifted(self, offset: int) -> Selection:
        """This selection with every position `offset` further (a chain walked from entry `offset` on)."""
        if not offset:
            return self
        skipped = [replace(s, position=s.position + offset) for s in self.skipped]
        return replace(self, position=self.position + offset, skipped=skipped)


def _prepare_entry(entry: BackendEntry, registry: BackendRegistry,
                   source: ModelSource) -> str | tuple[type[Backend], BackendOptions, Path]:
    """(backend class, options, artifact) for an entry, or a reason it cannot be used."""
    cls = registry.get(entry.name)
    if cls is None:
        return registry.why_missing(entry.name)
    try:
        options = cls.Options.model_validate(entry.options)
    except ValidationError as exc:  # config files are checked at load; this guards programmatic configs
        return format_validation_error(exc, f"backend '{entry.name}' options").replace("\n", "; ")
    artifact = source.artifact_for(cls.formats)
    if artifact is None:
        have = ", ".join(p.name for p in source.artifacts)
        return f"backend '{entry.name}' loads {', '.join(cls.formats)} files; the source has {have}"
    try:
        reason = cls.probe(options)
    except Exception as exc:  # a plugin's broken probe skips its entry; it must not stop the chain
        reason = f"probe raised {type(exc).__name__}: {exc}"
    if reason:
        return reason
    return cls, options, artifact


def select_backend(model: ModelConfig, source: ModelSource, registry: BackendRegistry,
                   instances: int = 1) -> tuple[Selection, Backend]:
    """Probe and load chain entries in order; return the winner and its loaded instance.

    Runs in the worker thread that will own the instance (device context is per thread).
    Raises BackendUnavailable listing every entry's reason when none loads.
    """
    skipped: list[SkippedEntry] = []
    declared = model.declared_signature()
    for position, entry in enumerate(model.backends):
        prepared = _prepare_entry(entry, registry, source)
        if isinstance(prepared, str):
            reason = prepared
        else:
            cls, options, artifact = prepared
            options = cls.tune_for_instances(options, instances)
            backend = cls()
            try:
                backend.load(artifact, options, source.signature_for(artifact, declared))
            except Exception as exc:
                backend.close()
                failed = isinstance(exc, BackendUnavailable)
                reason = str(exc) if failed else f"load failed: {type(exc).__name__}: {exc}"
            else:
                selection = Selection(position, entry, cls, options, artifact, skipped)
                return selection, backend
        skipped.append(SkippedEntry(position, entry.label(), reason))
    lines = "\n".join(f"  #{s.position} {s.label}: {s.reason}" for s in skipped)
    raise BackendUnavailable(f"model '{model.name}': no backend in its chain could load:\n{lines}", skipped)


def load_instance(selection: Selection, source: ModelSource, model: ModelConfig) -> Backend:
    """Load one more instance of an already-selected backend (in its own worker thread)."""
    artifact = source.artifact_for(selection.backend_cls.formats)
    if artifact is None:  # the selection came from this source, so only a changed source gets here
        raise BackendUnavailable(f"model '{model.name}': the source no longer has a {selection.label} artifact")
    backend = selection.backend_cls()
    backend.load(artifact, selection.options, source.signature_for(artifact, model.declared_signature()))
    return backend
