"""/v1/embeddings and /v1/models on a real server with small models that load in seconds (the MiniLM
tests are marked slow, which `make mutate` leaves out): `emb`, a tiny random BERT folder with
sentence-transformers' files (tests/api/hf_tiny_support.py), `gen`, the tiny random Llama that
generates (tests/conftest.py `tiny_llm`), and `tiny`, a v2-only network. Every answer is read whole."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from api_support import LiveServer
from hf_tiny_support import write_bert

TEXTS = ["The cat sits on the mat.", "Größe, café"]


@pytest.fixture(scope="module")
def live(server_factory, model_configs, tiny_llm, tmp_path_factory) -> Iterator[tuple[LiveServer, float]]:
    folder = write_bert(tmp_path_factory.mktemp("hf") / "bert")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(tmp_path_factory.mktemp("home")))  # the export's cache
        started = time.time()
        server = server_factory([
            {"name": "emb", "source": str(folder), "backends": [{"name": "onnxruntime"}]},
            {"name": "gen", "source": str(tiny_llm), "backends": [{"name": "torch", "device": "cpu"}],
             "generation": {"max_sequences": 2}},
            model_configs["tiny"]])
        yield server, started


def card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "hotswap"}


def test_models_lists_the_embedding_and_generating_models_in_config_order(live):
    server, started = live
    listed = httpx.get(f"{server.url}/v1/models", timeout=30)
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    created = listed.json()["data"][0]["created"]
    assert int(started) - 1 <= created <= time.time()
    assert listed.json() == {"object": "list", "data": [card("emb", created), card("gen", created)]}
    one = httpx.get(f"{server.url}/v1/models/gen", timeout=30)
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    assert one.json() == card("gen", created)


def test_a_model_v1_does_not_serve_is_404_naming_the_ones_it_does(live):
    server, _ = live
    for name in ("tiny", "nope"):
        answer = httpx.get(f"{server.url}/v1/models/{name}", timeout=30)
        assert answer.status_code == 404
        assert answer.json()["error"]["message"] == \
            f"model '{name}' is not served here through /v1; models: emb, gen"
        assert answer.json()["error"]["type"] == "invalid_request_error"


def embed(server: LiveServer, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json={"model": "emb", "input": TEXTS, **body}, timeout=60)


def test_float_and_base64_answers_are_the_same_unit_rows_and_truncation_renormalises(live):
    server, _ = live
    whole = embed(server)
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
    body = whole.json()
    tokens = body["usage"]["prompt_tokens"]
    assert body == {"object": "list", "model": "emb", "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    "data": [{"object": "embedding", "index": i, "embedding": body["data"][i]["embedding"]}
                             for i in range(2)]}
    assert tokens > len(TEXTS)
    rows = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert rows.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    packed = embed(server, encoding_format="base64").json()["data"]
    unpacked = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in packed])
    np.testing.assert_array_equal(unpacked, rows)
    short = embed(server, dimensions=8).json()["data"]
    kept = rows[:, :8] / np.linalg.norm(rows[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([item["embedding"] for item in short]), kept, atol=1e-6)
    every = embed(server, dimensions=32).json()["data"]  # all of them: allowed, and the rows unchanged
    np.testing.assert_allclose(np.array([item["embedding"] for item in every]), rows, atol=1e-6)
    short_packed = embed(server, dimensions=8, encoding_format="base64").json()["data"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(short_packed[1]["embedding"]), dtype="<f4"),
                               kept[1], atol=1e-6)


def test_refusals_name_the_field_and_are_counted_per_model_and_status(live):
    server, _ = live
    before = server.metrics()
    too_many = embed(server, dimensions=33)
    assert too_many.status_code == 400
    assert too_many.json()["error"] == {"message": "dimensions: 33 is more than the model's 32",
                                        "type": "invalid_request_error", "param": "dimensions",
                                        "code": "invalid_input"}
    not_text = httpx.post(f"{server.url}/v1/embeddings", json={"model": "tiny", "input": "a"}, timeout=30)
    assert not_text.status_code == 400
    assert not_text.json()["error"]["message"] == \
        "model 'tiny' is not a text-embedding model; /v1/embeddings serves: emb"
    assert embed(server).status_code == 200
    after = server.metrics()

    def delta(model: str, status: str) -> float:
        key = ("hotswap_openai_requests_total", frozenset({"model": model, "status": status}.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (delta("emb", "400"), delta("tiny", "400"), delta("emb", "200")) == (1.0, 1.0, 1.0)


def test_an_unloaded_model_is_503_with_retry_after_in_openais_shape(live):
    server, _ = live
    unloaded = httpx.post(f"{server.url}/v2/repository/models/emb/unload", timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    try:
        answer = embed(server)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"  # as on v2: an OpenAI client's back-off reads it
        error = answer.json()["error"]
        assert "model 'emb' is not ready" in error["message"] and error["type"] == "server_error"
    finally:
        reloaded = httpx.post(f"{server.url}/v2/repository/models/emb/load", timeout=120)
    assert reloaded.status_code == 200, reloaded.text
    assert embed(server).status_code == 200
