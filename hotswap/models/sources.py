"""Model sources: an artifact path, or a built-in recipe that prepares artifacts offline."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from hotswap.errors import ConfigError
from hotswap.models.config import ProcessorConfig

#: builtin:<name> -> "module:function" returning a ModelSource; preparation is offline.
BUILTIN_RECIPES = {"minilm": "hotswap.models.minilm:prepare"}


@dataclass
class ModelSource:
    """Artifacts of one model in the formats available, plus a default processor."""

    artifacts: list[Path]
    processor: ProcessorConfig | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def artifact_for(self, formats: tuple[str, ...]) -> Path | None:
        """The first artifact whose suffix is in `formats` (backend preference order)."""
        for suffix in formats:
            for path in self.artifacts:
                if path.suffix == suffix:
                    return path
        return None

    @property
    def base_dir(self) -> Path:
        return self.artifacts[0].parent


def hotswap_home() -> Path:
    """Cache directory for prepared artifacts: $HOTSWAP_HOME, else the user's cache dir."""
    if os.environ.get("HOTSWAP_HOME"):
        return Path(os.environ["HOTSWAP_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "hotswap"


def resolve_source(source: str, config_dir: Path | None = None, progress: bool = False) -> ModelSource:
    """Turn a config `source` into artifacts on disk (preparing a built-in if needed)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_RECIPES:
            raise ConfigError(f"source: unknown built-in model '{name}'; expected one of "
                              f"{', '.join('builtin:' + n for n in BUILTIN_RECIPES)}")
        module, func = BUILTIN_RECIPES[name].split(":")
        return getattr(importlib.import_module(module), func)(hotswap_home(), progress=progress)
    path = Path(source).expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    if not path.exists():
        raise ConfigError(f"source: artifact {path} does not exist")
    return ModelSource(artifacts=[path])
