"""Model sources: an artifact path, a folder of artifacts, a Hugging Face model folder (prepared
into the cache), or a built-in recipe that prepares artifacts offline."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from hotswap.config import ProcessorConfig
from hotswap.errors import ConfigError
from hotswap.models.signature import Signature

#: Files a folder source offers to backends (ONNX, TorchScript, torch.export, OpenVINO IR).
ARTIFACT_SUFFIXES = (".onnx", ".pt", ".pt2", ".xml")

#: A source with this prefix must be a Hugging Face model folder (config.json); without it, a folder
#: with config.json is one too, and any other folder is a folder of artifacts.
HF_PREFIX = "hf:"

#: builtin:<name> -> "module:function" returning a ModelSource; preparation is offline.
BUILTIN_RECIPES = {"minilm": "hotswap.models.minilm:prepare", "smollm2": "hotswap.models.smollm2:prepare"}


@dataclass
class ModelSource:
    """Artifacts of one model in the formats available, plus a default processor."""

    artifacts: list[Path]
    processor: ProcessorConfig | None = None
    notes: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, Signature] = field(default_factory=dict)
    """By artifact file name: the tensors of an artifact that carries no names (TorchScript), known
    to whoever made it; a backend gets it where the model config declares none."""

    def artifact_for(self, formats: tuple[str, ...]) -> Path | None:
        """The first artifact whose suffix is in `formats` (backend preference order)."""
        for suffix in formats:
            for path in self.artifacts:
                if path.suffix == suffix:
                    return path
        return None

    def signature_for(self, artifact: Path, declared: Signature | None) -> Signature | None:
        """What to load `artifact` with: the config's declared signature, else the source's own for it."""
        return declared if declared is not None else self.signatures.get(artifact.name)

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
    """Turn a config `source` into artifacts on disk (preparing a built-in or a model folder if needed)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_RECIPES:
            raise ConfigError(f"source: unknown built-in model '{name}'; expected one of "
                              f"{', '.join('builtin:' + n for n in BUILTIN_RECIPES)}")
        module, func = BUILTIN_RECIPES[name].split(":")
        return getattr(importlib.import_module(module), func)(hotswap_home(), progress=progress)
    hf = source.startswith(HF_PREFIX)
    path = Path(source.removeprefix(HF_PREFIX)).expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    if not path.exists():
        raise ConfigError(f"source: {source} does not exist")
    if hf and not (path / "config.json").is_file():
        raise ConfigError(f"source: {path / 'config.json'} is missing; an {HF_PREFIX} source is a Hugging Face "
                          "model folder")
    if path.is_dir() and (path / "config.json").is_file():
        # Imported here: preparing needs torch and transformers, serving an artifact does not.
        from hotswap.models.hf_encoder import prepare_folder

        return prepare_folder(path, hotswap_home() / "hf", path.name, progress)
    if path.is_dir():
        return _folder_source(source, path)
    return ModelSource(artifacts=[path])


def _folder_source(source: str, folder: Path) -> ModelSource:
    """A folder of artifacts of one model in several formats: each backend takes its own."""
    artifacts = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in ARTIFACT_SUFFIXES)
    if not artifacts:
        raise ConfigError(f"source: folder {source} holds no model artifact "
                          f"({', '.join(ARTIFACT_SUFFIXES)})")
    return ModelSource(artifacts=artifacts)
