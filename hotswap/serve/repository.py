"""The model repository: configured models, their runners, load / unload / swap.

A load with a config override builds the new runner completely before it replaces the
old one, then drains the old one, so requests keep flowing through a backend swap. A
failed load leaves the model as it was.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from hotswap.backends.registry import BackendRegistry
from hotswap.errors import ConfigError, InvalidInput, ModelNotFound, ModelNotReady
from hotswap.models.config import HotswapConfig, ModelConfig, format_validation_error
from hotswap.serve.metrics import Metrics
from hotswap.serve.runner import ModelRunner

log = logging.getLogger("hotswap.repository")


@dataclass
class ModelSlot:
    """One configured model and what serves it now."""

    config: ModelConfig
    runner: ModelRunner | None = None
    state: str = "UNAVAILABLE"  # READY, LOADING, UNAVAILABLE
    reason: str = ""


class ModelRepository:
    """All models of one app, by name."""

    def __init__(self, config: HotswapConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False) -> None:
        self.registry = registry
        self.metrics = metrics
        self._config_dir = config_dir
        self._progress = progress
        self.slots = {m.name: ModelSlot(m) for m in config.models}
        self._locks = {name: asyncio.Lock() for name in self.slots}

    def slot(self, name: str) -> ModelSlot:
        try:
            return self.slots[name]
        except KeyError:
            raise ModelNotFound(f"unknown model '{name}'; models: {', '.join(self.slots) or 'none'}") from None

    def ready_runner(self, name: str, version: str | None = None) -> ModelRunner:
        """The runner serving `name` (and `version`), or 404 / 503."""
        slot = self.slot(name)
        if version is not None and version != slot.config.version:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {slot.config.version}")
        if slot.runner is None:
            detail = f": {slot.reason}" if slot.reason else ""
            raise ModelNotReady(f"model '{name}' is not ready (state {slot.state}){detail}")
        return slot.runner

    async def load_all(self) -> None:
        """Load every model; the first that cannot load stops start-up with its reasons."""
        for name in self.slots:
            await self.load(name)

    def _override(self, slot: ModelSlot, override: dict | None) -> ModelConfig:
        if not override:
            return slot.config
        if not isinstance(override, dict):
            raise InvalidInput("parameters.config: expected a JSON object with model config fields")
        data = slot.config.model_dump(exclude_unset=False) | override
        data["name"] = slot.config.name
        try:
            return ModelConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "load request", ("parameters", "config"))) from None

    async def load(self, name: str, override: dict | None = None) -> ModelRunner:
        """(Re)load `name`, optionally with config fields replaced; swap in when ready."""
        slot = self.slot(name)
        config = self._override(slot, override)
        async with self._locks[name]:
            previous_state = slot.state
            if slot.runner is None:
                slot.state = "LOADING"
            runner = ModelRunner(config, self.registry, self.metrics, self._config_dir, self._progress)
            try:
                await runner.start()
            except Exception as exc:
                slot.state, slot.reason = (previous_state, slot.reason) if slot.runner else ("UNAVAILABLE", str(exc))
                raise
            old, slot.runner, slot.config, slot.state, slot.reason = slot.runner, runner, config, "READY", ""
        if old is not None:
            await old.close()
        return runner

    async def unload(self, name: str) -> None:
        slot = self.slot(name)
        async with self._locks[name]:
            old, slot.runner, slot.state, slot.reason = slot.runner, None, "UNAVAILABLE", "unloaded"
        if old is not None:
            await old.close()

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in self.slots), return_exceptions=True)

    def index(self) -> list[dict]:
        return [{"name": name, "version": slot.config.version, "state": slot.state, "reason": slot.reason}
                for name, slot in self.slots.items()]

    def all_ready(self) -> bool:
        return all(slot.state == "READY" for slot in self.slots.values())
