"""What a Hugging Face / sentence-transformers model folder says about serving it.

    config.json                      model_type: which architectures hotswap exports
    model.safetensors | pytorch_model.bin   the weights (.bin is read with weights_only)
    tokenizer.json                   the fast tokenizer the text-embedding processor runs
    modules.json                     optional: sentence-transformers' pipeline (Pooling, Normalize)
    1_Pooling/config.json            optional: pooling_mode_* (mean, cls, lasttoken)
    2_Normalize/                     optional: L2 normalisation
    sentence_bert_config.json        optional: max_seq_length

Reading is cheap and done at every start-up; problems are ConfigErrors naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotswap.config import ProcessorConfig
from hotswap.errors import ConfigError

#: Encoder architectures that transformers loads without remote code and that export as one graph.
ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert"})
#: Decoder architectures: causal, so the default pooling is the last token.
DECODERS = frozenset({"llama", "qwen2", "mistral"})
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: sentence-transformers' pooling_mode_* keys -> the text-embedding processor's `pooling`.
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_lasttoken": "last"}
_MODULE = "sentence_transformers.models."
#: Longest sequence taken when the folder names none (and the cap for configs that claim huge ones).
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class HFFolder:
    """A model folder's architecture, files and text-embedding settings."""

    path: Path
    model_type: str
    weights: Path
    pooling: str
    normalize: bool
    max_length: int
    #: Longest sequence the exported programs accept (the model's position table).
    max_positions: int

    @property
    def decoder(self) -> bool:
        return self.model_type in DECODERS

    def processor(self) -> ProcessorConfig:
        """The text-embedding config for this folder; options at the processor's defaults are left out."""
        extra: dict[str, Any] = {"tokenizer": "tokenizer.json", "max_length": self.max_length}
        if self.pooling != "mean":
            extra["pooling"] = self.pooling
        if not self.normalize:
            extra["normalize"] = False
        return ProcessorConfig(name="text-embedding", **extra)


def is_hf_folder(path: Path) -> bool:
    """A folder with config.json; a folder of .onnx / .pt / .pt2 files has none."""
    return path.is_dir() and (path / "config.json").is_file()


def read_folder(folder: Path) -> HFFolder:
    """Describe `folder`, or a ConfigError naming the missing or unsupported file."""
    config = _json(folder / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in ENCODERS | DECODERS:
        raise ConfigError(f"{folder / 'config.json'}: model_type {model_type!r} is not supported; hotswap "
                          f"exports {', '.join(sorted(ENCODERS | DECODERS))}")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ConfigError(f"{folder}: no weights file; expected {' or '.join(WEIGHT_FILES)} (sharded checkpoints "
                          "are not supported)")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder / 'tokenizer.json'}: missing; hotswap needs the fast tokenizer file")
    pooling, normalize = _pipeline(folder, "last" if model_type in DECODERS else "mean")
    positions = config.get("max_position_embeddings")
    positions = positions if isinstance(positions, int) and positions > 0 else DEFAULT_MAX_LENGTH
    return HFFolder(folder, model_type, weights, pooling, normalize, _max_length(folder, positions), positions)


def _pipeline(folder: Path, default_pooling: str) -> tuple[str, bool]:
    """(pooling, normalize) from modules.json, else from 1_Pooling / 2_Normalize, else the defaults."""
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = _json(modules_file)
        if not isinstance(modules, list):
            raise ConfigError(f"{modules_file}: expected a list of modules")
        kinds = {str(m.get("type", "")).removeprefix(_MODULE): m for m in modules if isinstance(m, dict)}
        unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
        if unsupported:
            raise ConfigError(f"{modules_file}: module {', '.join(unsupported)} is not supported; hotswap serves "
                              "Transformer, Pooling and Normalize")
        pooling_dir = folder / str(kinds["Pooling"].get("path", "")) if "Pooling" in kinds else None
        normalize = "Normalize" in kinds
    else:
        pooling_dir = folder / "1_Pooling" if (folder / "1_Pooling").is_dir() else None
        # Without sentence-transformers' description, embeddings are normalised, as embedding APIs return them.
        normalize = (folder / "2_Normalize").is_dir() or pooling_dir is None
    if pooling_dir is None:
        return default_pooling, normalize
    return _pooling(pooling_dir / "config.json"), normalize


def _pooling(path: Path) -> str:
    config = _json(path)
    chosen = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
    if len(chosen) != 1 or chosen[0] not in _POOLING_MODES:
        raise ConfigError(f"{path}: pooling {', '.join(chosen) or 'none'} is not supported; expected exactly one "
                          f"of {', '.join(_POOLING_MODES)}")
    return _POOLING_MODES[chosen[0]]


def _max_length(folder: Path, positions: int) -> int:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's model_max_length, capped by positions."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        if (folder / name).is_file():
            value = _json(folder / name).get(key)
            if isinstance(value, int) and 0 < value:
                return min(value, positions)
    return min(DEFAULT_MAX_LENGTH, positions)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON: {exc}") from None
