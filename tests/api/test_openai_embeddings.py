"""POST /v1/embeddings and GET /v1/models with the real `openai` client against a real server.

The server runs builtin:minilm (prepared once by the `minilm_source` fixture) on onnxruntime
CPU, next to the tiny network, which has no text-embedding processor.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from api_support import LiveServer

pytestmark = pytest.mark.slow

TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Größe, café, 日本語"]


@pytest.fixture(scope="module")
def live(server_factory, model_configs, minilm_source) -> Iterator[LiveServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(minilm_source.base_dir.parents[1]))  # the prepared cache: no rebuild
        minilm = {"name": "minilm", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}]}
        yield server_factory([minilm, model_configs["tiny"]])


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    # No retries: a 503 or a 5xx must show up as the test's failure, not be retried away.
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)


def v2_embeddings(live: LiveServer, texts: list[str]) -> np.ndarray:
    with live.client() as triton:
        text = httpclient.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        return triton.infer("minilm", [text]).as_numpy("embedding")


def test_single_string(client):
    result = client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    assert result.object == "list" and result.model == "minilm"
    [item] = result.data
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == 384
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-5)
    # [CLS] the cat sits on the mat . [SEP]: MiniLM's own tokenizer, not an estimate
    assert result.usage.prompt_tokens == result.usage.total_tokens == 9


def test_batch_matches_v2_and_counts_every_text(live, client):
    result = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    assert [item.index for item in result.data] == [0, 1, 2]
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, v2_embeddings(live, TEXTS), rtol=0, atol=1e-6)
    single = [client.embeddings.create(model="minilm", input=t).usage.prompt_tokens for t in TEXTS]
    assert result.usage.prompt_tokens == sum(single) and len(set(single)) > 1


def test_base64_decodes_to_the_float_answer(live, client):
    floats = client.embeddings.create(model="minilm", input=TEXTS[:2], encoding_format="float")
    raw = httpx.post(f"{live.url}/v1/embeddings", timeout=30,
                     json={"model": "minilm", "input": TEXTS[:2], "encoding_format": "base64"}).json()
    decoded = np.array([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in raw["data"]])
    np.testing.assert_array_equal(decoded, np.array([item.embedding for item in floats.data], dtype=np.float32))
    # The openai client asks for base64 by default and decodes it itself: same numbers again.
    default = client.embeddings.create(model="minilm", input=TEXTS[:2])
    np.testing.assert_array_equal(np.array([item.embedding for item in default.data], dtype=np.float32), decoded)


def test_dimensions_truncate_and_renormalise(client):
    full = np.array(client.embeddings.create(model="minilm", input=TEXTS[1], encoding_format="float")
                    .data[0].embedding, dtype=np.float32)
    short = np.array(client.embeddings.create(model="minilm", input=TEXTS[1], dimensions=64,
                                              encoding_format="float").data[0].embedding, dtype=np.float32)
    assert short.shape == (64,)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="minilm", input="x", dimensions=385)
    assert info.value.param == "dimensions" and "384" in info.value.message


def test_unknown_model_is_404_in_openai_shape(live, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="nope", input="hello")
    assert info.value.code == "model_not_found" and "nope" in info.value.message
    body = httpx.post(f"{live.url}/v1/embeddings", json={"model": "nope", "input": "x"}, timeout=30).json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("bad", [[], "", ["ok", ""]])
def test_empty_input_is_400(client, bad):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="minilm", input=bad)
    assert info.value.param == "input" and info.value.type == "invalid_request_error"


def test_token_ids_are_refused_with_a_reason(client):
    with pytest.raises(openai.BadRequestError, match="token-id arrays are not supported"):
        client.embeddings.create(model="minilm", input=[[101, 2023, 102]])


def test_a_model_without_text_embedding_is_not_served(live, client):
    assert [m.id for m in client.models.list()] == ["minilm"]
    assert client.models.retrieve("minilm").owned_by == "hotswap"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tiny")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny", input="hello")
    assert info.value.param == "model" and "serves: minilm" in info.value.message


def test_requests_are_counted_per_model_and_status(live, client):
    before = live.metrics()
    client.embeddings.create(model="minilm", input="counted")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="not-configured", input="x")
    after = live.metrics()

    def delta(sample: str, **labels: str) -> float:
        key = (sample, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("hotswap_openai_requests_total", model="minilm", status="200") == 1
    assert delta("hotswap_openai_requests_total", model="", status="404") == 1  # no series per unknown name
    # The data plane's own request metrics saw the /v1 request too.
    success = [k for k in after if k[0] == "hotswap_request_success_total" and ("model", "minilm") in k[1]]
    assert sum(after[k] - before.get(k, 0.0) for k in success) == 1


def test_openapi_describes_the_v1_routes(live):
    paths = httpx.get(f"{live.url}/openapi.json", timeout=30).json()["paths"]
    body = paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "input", "encoding_format", "dimensions"} <= set(body["properties"])
    assert "/v1/models" in paths
