"""A GGUF file de-quantised into a Hugging Face model folder, at prepare time only.

transformers reads the GGUF file (with the `gguf` package) into a float32 model and a fast
tokenizer; hotswap writes them as config.json, model.safetensors and tokenizer.json into
`<root>/<key>/`, once, under the same lock and manifest as every prepared folder
(hf_encoder.build_once). The folder then goes through the model-folder path like any other.
Serving never needs `gguf`: only preparing does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from hotswap.models.hf_encoder import PreparationError, build_once, package_version, write_manifest

log = logging.getLogger("hotswap.models.gguf_folder")

_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def dequantize(gguf: Path, root: Path, label: str) -> Path:
    """The folder of `gguf`'s model in float32 under `root/<key>/`, written once and then reused."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise PreparationError(f"{gguf}: GGUF file missing")
    final = Path(root) / _key(gguf)
    _, state = build_once(final, "model.safetensors", lambda out: _write_folder(gguf, out, final.name), label)
    log.info("%s GGUF de-quantised folder: %s (%s)", label, final, state)
    return final


def _key(gguf: Path) -> str:
    """Size, first and last MiB of the GGUF file, and the versions of what de-quantises it."""
    digest = hashlib.sha256(f"{package_version('transformers')}|{package_version('gguf')}|{gguf.name}".encode())
    size = gguf.stat().st_size
    digest.update(str(size).encode())
    with gguf.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read())
    return digest.hexdigest()[:16]


def _write_folder(gguf: Path, out: Path, key: str) -> None:
    import torch
    from safetensors.torch import save_file

    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it; say so before it fails deeper down
        import transformers
    except ImportError as exc:
        raise PreparationError(f"de-quantising {gguf.name} needs 'transformers' and 'gguf' "
                               "(pip install gguf accelerate)") from exc
    model = transformers.AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model; its weights are plain float32 by now.
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise PreparationError(f"{gguf.name}: transformers wrote no tokenizer.json for its tokenizer")
    write_manifest(out, key, _FILES)
