"""A model folder whose torch.export fails: hotswap falls back to TorchScript (model.pt), which
carries no tensor names, so the preparation records them in the cache's manifest and the torch
backend loads the file with them, with nothing declared in the config. Served next to
onnxruntime on the same folder, the two agree.

torch.export is made to refuse (monkeypatched to raise) because no model here makes it fail on
its own; everything else is real: transformers, the TorchScript trace, both backends, uvicorn
and the `openai` client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from api_support import LiveServer
from hf_tiny_support import write_bert

from hotswap.models.hf_encoder import compare, prepare_folder
from hotswap.models.signature import Signature, TensorSpec
from hotswap.models.sources import ModelSource

TEXTS = ["The cat sits on the mat.", "Größe, café"]
TOKENS = ("input_ids", "attention_mask", "token_type_ids")


def refuse_export(*args, **kwargs):
    raise RuntimeError("torch.export refused by the test")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return write_bert(tmp_path_factory.mktemp("hf") / "bert")


@pytest.fixture(scope="module")
def live(server_factory, bert, tmp_path_factory) -> Iterator[LiveServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(tmp_path_factory.mktemp("home")))
        patch.setattr(torch.export, "export", refuse_export)
        # Two torch instances: the second loads through load_instance, the first through the chain.
        yield server_factory([{"name": "bert-torch", "source": str(bert), "backends": [{"name": "torch"}],
                               "instances": 2},
                              {"name": "bert-onnxruntime", "source": str(bert), "backends": [{"name": "onnxruntime"}]}])


def embed(live: LiveServer, model: str) -> np.ndarray:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)
    return np.array([item.embedding for item in client.embeddings.create(model=model, input=TEXTS).data])


def test_torch_serves_the_torchscript_fallback_as_onnxruntime_serves_the_onnx(live):
    meta = httpx.get(f"{live.url}/v2/models/bert-torch", timeout=30).json()
    assert meta["platform"] == "torch_pt"  # the TorchScript file, not a torch.export program
    got, expected = embed(live, "bert-torch"), embed(live, "bert-onnxruntime")
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_the_manifest_names_the_fallbacks_tensors(live, bert):
    from hotswap.models.sources import hotswap_home

    source = prepare_folder(bert, hotswap_home() / "hf")  # a cache hit: read back from manifest.json
    assert source.notes["prepared"] == "cache"
    assert [p.name for p in source.artifacts] == ["model.onnx", "model.pt"]
    signature = source.signatures["model.pt"]
    assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [(n, "INT64", (-1, -1)) for n in TOKENS]
    assert [(s.name, s.datatype, s.shape) for s in signature.outputs] == [("token_embeddings", "FP32", (-1, -1, 32))]


def test_the_fallback_is_compared_with_torch_like_the_other_exports(bert, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.export, "export", refuse_export)
    compared = []

    def recording(what: str, got: np.ndarray, expected: np.ndarray) -> None:
        compared.append(what)
        compare(what, got, expected)

    prepare_folder(bert, tmp_path, check=recording)
    assert compared == ["model.onnx (onnxruntime)", "model.pt (TorchScript)"]


def test_a_declared_signature_wins_over_the_sources_own(tmp_path):
    own = Signature(inputs=(TensorSpec(name="a", datatype="FP32", shape=(-1,)),), outputs=())
    declared = Signature(inputs=(TensorSpec(name="b", datatype="FP32", shape=(-1,)),), outputs=())
    source = ModelSource([tmp_path / "model.pt", tmp_path / "model.onnx"], signatures={"model.pt": own})
    assert source.signature_for(tmp_path / "model.pt", None) is own
    assert source.signature_for(tmp_path / "model.pt", declared) is declared
    assert source.signature_for(tmp_path / "model.onnx", None) is None
