"""A Hugging Face model folder as a source, exported and served, against transformers itself.

Two small models with random weights, written with transformers (no hub): a BERT encoder
with sentence-transformers' modules.json asking for CLS pooling and weights in
pytorch_model.bin, and a Llama decoder folder with no sentence-transformers files, which
gets last-token pooling. Each is served on every CPU backend installed, queried with the
real `openai` client, and compared with transformers' own forward pass, pooled here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
import transformers
from api_support import LiveServer
from hf_tiny_support import write_bert, write_llama
from tokenizers import Tokenizer

from hotswap.models.hf_encoder import prepare_folder

TEXTS = ["The cat sits on the mat.", "A feline rests on a rug, quietly and for a long while.", "Größe, café"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    # The BERT folder's max_seq_length is 12: TEXTS[1] is truncated.
    return {"bert": write_bert(root / "bert"), "llama": write_llama(root / "llama")}


def reference(folder: Path, pooling: str, max_length: int) -> np.ndarray:
    """transformers' forward pass, one text at a time (no padding), pooled and normalised here."""
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's file pads to a fixed 128
    tokenizer.enable_truncation(max_length)
    rows = []
    for text in TEXTS:
        ids = torch.tensor([tokenizer.encode(text).ids])
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        row = hidden[0] if pooling == "cls" else hidden[-1]
        rows.append((row / row.norm()).numpy())
    return np.stack(rows)


def cpu_backends(registry) -> list[dict]:
    entries = [{"name": "onnxruntime"}, {"name": "torch", "device": "cpu"}]
    if "openvino" in registry.available:
        entries.append({"name": "openvino"})
    return entries


@pytest.fixture(scope="module")
def live(server_factory, folders, registry, tmp_path_factory) -> Iterator[LiveServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(tmp_path_factory.mktemp("home")))  # inside the test's model roots
        models = [{"name": f"{kind}-{entry['name']}", "source": str(path), "backends": [entry]}
                  for kind, path in folders.items() for entry in cpu_backends(registry)]
        yield server_factory(models)


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)


def served(client: openai.OpenAI, model: str) -> np.ndarray:
    result = client.embeddings.create(model=model, input=TEXTS)
    return np.array([item.embedding for item in result.data], dtype=np.float32)


@pytest.mark.parametrize(("kind", "pooling", "max_length"), [("bert", "cls", 12), ("llama", "last", 128)])
def test_every_cpu_backend_matches_transformers(client, folders, registry, kind, pooling, max_length):
    expected = reference(folders[kind], pooling, max_length)
    for entry in cpu_backends(registry):
        got = served(client, f"{kind}-{entry['name']}")
        assert got.shape == (3, 32)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{kind} on {entry['name']}")


def test_usage_counts_tokens_after_the_folders_truncation(client):
    # max_seq_length 12 in sentence_bert_config.json: the long text is cut to 12 tokens.
    assert client.embeddings.create(model="bert-onnxruntime", input=TEXTS[1]).usage.prompt_tokens == 12
    assert client.embeddings.create(model="llama-onnxruntime", input=TEXTS[1]).usage.prompt_tokens > 12


def test_prepared_once_keyed_by_content(live, folders, tmp_path):
    from hotswap.models.sources import hotswap_home

    again = prepare_folder(folders["llama"], hotswap_home() / "hf")
    assert again.notes["prepared"] == "cache" and again.processor.model_extra["pooling"] == "last"
    copy = shutil.copytree(folders["llama"], tmp_path / "llama")
    assert prepare_folder(copy, hotswap_home() / "hf").artifacts == again.artifacts  # same content, same key
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-5}))
    changed = prepare_folder(copy, hotswap_home() / "hf")
    assert changed.notes["prepared"] == "built" and changed.base_dir != again.base_dir
