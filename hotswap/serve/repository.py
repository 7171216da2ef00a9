"""The model repository: configured models, their runners, load / unload / swap.

A load with a config override builds the new runner completely before it replaces the
old one, then drains the old one, so requests keep flowing through a backend swap. A
failed load leaves the model as it was.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from hotswap.backends.registry import BackendRegistry
from hotswap.config import HotswapConfig, ModelConfig, format_validation_error
from hotswap.errors import ConfigError, InvalidInput, ModelNotFound, ModelNotReady
from hotswap.models.sources import ARTIFACT_SUFFIXES, hotswap_home
from hotswap.serve.metrics import Metrics
from hotswap.serve.runner import ModelRunner
from hotswap.serve.supervisor import ModelSupervisor

if TYPE_CHECKING:  # imported when a generating model loads: it pulls in transformers
    from hotswap.generate.service import GenerationService

log = logging.getLogger("hotswap.repository")

#: Model config fields a repository load request may change.
OVERRIDABLE = frozenset({"backends", "batching", "instances"})


class ModelState(str, enum.Enum):
    """A model's state as the repository index reports it."""

    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelSlot:
    """One configured model and what serves it now (its supervisor picks the runner)."""

    config: ModelConfig
    supervisor: ModelSupervisor | None = None
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    generator: GenerationService | None = None  # instead of `supervisor` for a `generation:` model

    @property
    def runner(self) -> ModelRunner | None:
        """The runner serving now."""
        return None if self.supervisor is None else self.supervisor.active


def model_roots(config: HotswapConfig, config_dir: Path | None) -> list[Path]:
    """Folders model files may come from: `server.model_roots`, else the config's folder and the cache."""
    roots = config.server.model_roots or [config_dir or Path.cwd(), hotswap_home()]
    return [Path(root).expanduser().resolve() for root in roots]


def check_model_roots(config: HotswapConfig, config_dir: Path | None) -> None:
    """Refuse file sources outside the model roots: loading a .pt or .pt2 file runs code from it."""
    roots = model_roots(config, config_dir)
    for i, model in enumerate(config.models):
        if model.source.startswith("builtin:"):
            continue
        path = Path(model.source.removeprefix("hf:")).expanduser()
        if not path.is_absolute():
            path = (config_dir or Path.cwd()) / path
        # A folder's files are checked one by one: a symlink inside a root may point out of it.
        files = [path, *(p for p in path.iterdir() if p.suffix in ARTIFACT_SUFFIXES)] if path.is_dir() else [path]
        if not all(any(f.resolve().is_relative_to(root) for root in roots) for f in files):
            raise ConfigError(f"models.{i}.source: {model.source} lies outside server.model_roots "
                              f"({', '.join(str(r) for r in roots)}); model files are code, add its folder "
                              "to server.model_roots if it is trusted")


class ModelRepository:
    """All models of one app, by name."""

    def __init__(self, config: HotswapConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False) -> None:
        check_model_roots(config, config_dir)
        self._registry = registry
        self._metrics = metrics
        self._drain_timeout_s = config.server.graceful_timeout_s
        self._config_dir = config_dir
        self._progress = progress
        self.slots = {m.name: ModelSlot(m) for m in config.models}
        self._locks = {name: asyncio.Lock() for name in self.slots}

    def slot(self, name: str) -> ModelSlot:
        try:
            return self.slots[name]
        except KeyError:
            raise ModelNotFound(f"unknown model '{name}'; models: {', '.join(self.slots) or 'none'}") from None

    def ready_supervisor(self, name: str, version: str | None = None) -> ModelSupervisor:
        """The supervisor of `name` (and `version`), or 404 / 503."""
        slot = self.slot(name)
        if version is not None and version != slot.config.version:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {slot.config.version}")
        if slot.config.generation is not None:
            raise InvalidInput(f"model '{name}' generates text: use POST /v2/models/{name}/generate[_stream], "
                               "/v1/chat/completions or /v1/completions")
        if slot.supervisor is None or slot.supervisor.active is None:
            detail = f": {slot.reason}" if slot.reason else ""
            raise ModelNotReady(f"model '{name}' is not ready (state {slot.state.value}){detail}")
        return slot.supervisor

    def ready_generator(self, name: str, version: str | None = None) -> GenerationService:
        """The service of generating model `name`, or 404 / 400 (not a generating model) / 503."""
        slot = self.slot(name)
        if version is not None and version != slot.config.version:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {slot.config.version}")
        if slot.config.generation is None:
            raise InvalidInput(f"model '{name}' does not generate text (its config has no `generation:` section)")
        if slot.generator is None:
            detail = f": {slot.reason}" if slot.reason else ""
            raise ModelNotReady(f"model '{name}' is not ready (state {slot.state.value}){detail}")
        return slot.generator

    def metadata(self, name: str, version: str | None = None) -> dict:
        """v2 model metadata of a ready model, generating or not."""
        if self.slot(name).config.generation is not None:
            return self.ready_generator(name, version).metadata()
        return self.ready_supervisor(name, version).metadata()

    def check_ready(self, name: str, version: str | None = None) -> None:
        """Returns if the model serves; raises ModelNotFound / ModelNotReady otherwise."""
        if self.slot(name).config.generation is not None:
            self.ready_generator(name, version)
        else:
            self.ready_runner(name, version)

    def ready_runner(self, name: str, version: str | None = None) -> ModelRunner:
        """The runner serving `name` (and `version`) now, or 404 / 503."""
        return self.ready_supervisor(name, version).serving()

    async def load_all(self) -> None:
        """Load every model; the first that cannot load stops start-up with its reasons."""
        for name in self.slots:
            await self.load(name)

    def _override(self, slot: ModelSlot, override: dict | None) -> ModelConfig:
        if not override:
            return slot.config
        if not isinstance(override, dict):
            raise InvalidInput("parameters.config: expected a JSON object with model config fields")
        refused = sorted(set(override) - OVERRIDABLE)
        if refused:
            # The source, processor and declared tensors name files and code: only the operator's
            # config file may set them, never a request.
            raise InvalidInput(f"parameters.config: cannot change {', '.join(refused)} at run time; "
                               f"a load may change only {', '.join(sorted(OVERRIDABLE))}")
        data = slot.config.model_dump(exclude_unset=False) | override
        try:
            return ModelConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "load request", ("parameters", "config"))) from None

    async def load(self, name: str, override: dict | None = None) -> ModelRunner | None:
        """(Re)load `name`, optionally with config fields replaced; swap in when ready."""
        slot = self.slot(name)
        config = self._override(slot, override)
        if config.generation is not None:
            await self._load_generator(slot, config)
            return None
        async with self._locks[name]:
            previous_state = slot.state
            if slot.supervisor is None:
                slot.state = ModelState.LOADING
            supervisor = ModelSupervisor(config, self._registry, self._metrics, self._config_dir, self._progress,
                                         self._drain_timeout_s)
            try:
                await supervisor.start()
            except Exception as exc:
                if slot.supervisor is None:
                    slot.state, slot.reason = ModelState.UNAVAILABLE, str(exc)
                else:
                    slot.state = previous_state
                raise
            old, slot.supervisor = slot.supervisor, supervisor
            slot.config, slot.state, slot.reason = config, ModelState.READY, ""
        if old is not None:
            await old.close(self._drain_timeout_s)
        return supervisor.serving()

    async def _load_generator(self, slot: ModelSlot, config: ModelConfig) -> None:
        """(Re)load a generating model: the new service starts before it replaces the old one."""
        from hotswap.generate.service import GenerationService

        async with self._locks[config.name]:
            previous_state = slot.state
            if slot.generator is None:
                slot.state = ModelState.LOADING
            service = GenerationService(config, self._registry, self._metrics, self._config_dir, self._progress)
            try:
                await service.start()
            except Exception as exc:
                await service.close()
                slot.state, slot.reason = ((ModelState.UNAVAILABLE, str(exc)) if slot.generator is None
                                           else (previous_state, slot.reason))
                raise
            old, slot.generator = slot.generator, service
            slot.config, slot.state, slot.reason = config, ModelState.READY, ""
        if old is not None:
            await old.close(self._drain_timeout_s)

    async def unload(self, name: str) -> None:
        slot = self.slot(name)
        async with self._locks[name]:
            old, slot.supervisor, slot.state, slot.reason = slot.supervisor, None, ModelState.UNAVAILABLE, "unloaded"
            generator, slot.generator = slot.generator, None
        if old is not None:
            await old.close(self._drain_timeout_s)
        if generator is not None:
            await generator.close(self._drain_timeout_s)

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in self.slots), return_exceptions=True)

    def index(self) -> list[dict]:
        return [{"name": name, "version": slot.config.version, "state": slot.state.value, "reason": slot.reason}
                for name, slot in self.slots.items()]

    def runners(self) -> list[ModelRunner]:
        """The runners serving now (one per model; standbys are not serving)."""
        return [slot.runner for slot in self.slots.values() if slot.runner is not None]

    def all_ready(self) -> bool:
        return all(slot.state == ModelState.READY for slot in self.slots.values())
