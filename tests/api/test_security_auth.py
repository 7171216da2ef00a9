"""Bearer-token authentication (`server.auth`), through tritonclient's `headers=` as a real client sends it.

One server has an `infer` token read from an environment variable and an `admin` token read
from a file; /metrics is open there. A second server asks the `infer` scope for /metrics.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from api_support import LiveServer, infer_tiny, server_section, tiny_input
from security_support import assert_json_error, bearer, serve, triton_error

INFER_ENV = "HOTSWAP_TEST_INFER_TOKEN"
X = tiny_input(3, seed=5)


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    return {"infer": secrets.token_hex(16), "admin": secrets.token_hex(16), "other": secrets.token_hex(16)}


def token_sources(tokens: dict[str, str], folder) -> list[dict]:
    """The infer token from the environment, the admin token from a file (first line; the rest ignored)."""
    token_file = folder / "admin.token"
    token_file.write_text(f"{tokens['admin']}\nthis second line is not part of the token\n")
    return [{"scope": "infer", "env": INFER_ENV}, {"scope": "admin", "file": str(token_file)}]


def start(registry, model_configs, tokens, tmp_path_factory, metrics: str) -> Iterator[LiveServer]:
    section = server_section(tmp_path_factory) | {
        "auth": {"tokens": token_sources(tokens, tmp_path_factory.mktemp("tokens")), "metrics": metrics}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(INFER_ENV, tokens["infer"])
        with serve(registry, section, [model_configs["tiny"]]) as live:
            yield live


@pytest.fixture(scope="module")
def secured(registry, model_configs, tokens, tmp_path_factory) -> Iterator[LiveServer]:
    """Tokens on, /metrics open (the default)."""
    yield from start(registry, model_configs, tokens, tmp_path_factory, "open")


@pytest.fixture(scope="module")
def metrics_need_infer(registry, model_configs, tokens, tmp_path_factory) -> Iterator[LiveServer]:
    """Tokens on, `auth.metrics: infer`."""
    yield from start(registry, model_configs, tokens, tmp_path_factory, "infer")


def assert_right_answer(result, tiny) -> None:
    np.testing.assert_allclose(result.as_numpy("y"), tiny.reference({"x": X})["y"], atol=1e-5, rtol=0)


def test_no_token_is_401_with_a_bearer_challenge(secured):
    """Inference without credentials is refused before the model is reached, with a Bearer challenge."""
    client = secured.client()
    with triton_error(401, "missing bearer token"):
        infer_tiny(client, "tiny", X)
    with triton_error(401, "missing bearer token"):
        client.get_model_metadata("tiny")
    response = httpx.post(f"{secured.url}/v2/models/tiny/infer", timeout=10,
                          json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]})
    assert_json_error(response, 401, "missing bearer token")
    assert response.headers["www-authenticate"] == 'Bearer realm="hotswap"'


def test_a_wrong_token_or_scheme_is_401(secured, tokens):
    """An unknown token, or a token under another scheme than Bearer, is not accepted."""
    client = secured.client()
    with triton_error(401, "invalid bearer token"):
        infer_tiny(client, "tiny", X, headers=bearer(tokens["other"]))
    with triton_error(401, "invalid bearer token"):
        infer_tiny(client, "tiny", X, headers=bearer(tokens["infer"][:-1]))  # a prefix is not the token
    with triton_error(401, "missing bearer token"):
        infer_tiny(client, "tiny", X, headers={"Authorization": f"Basic {tokens['infer']}"})
    response = httpx.get(f"{secured.url}/v2/models/tiny", headers=bearer(tokens["other"]), timeout=10)
    assert_json_error(response, 401, "invalid bearer token")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_infer_token_from_the_environment_serves_inference_and_metadata(secured, tokens, tiny):
    """The env token has scope infer: inference, model and server metadata and readiness answer 200."""
    client, headers = secured.client(), bearer(tokens["infer"])
    assert_right_answer(infer_tiny(client, "tiny", X, headers=headers), tiny)
    assert client.get_model_metadata("tiny", headers=headers)["name"] == "tiny"
    assert client.get_server_metadata(headers=headers)["name"] == "hotswap"
    assert client.is_model_ready("tiny", headers=headers)


def test_the_infer_token_is_403_on_the_repository_api(secured, tokens, tiny):
    """A valid infer token cannot load, unload or list models (403, not 401), and nothing was unloaded."""
    client, headers = secured.client(), bearer(tokens["infer"])
    with triton_error(403, "needs 'admin'"):
        client.get_model_repository_index(headers=headers)
    with triton_error(403, "needs 'admin'"):
        client.unload_model("tiny", headers=headers)
    with triton_error(403, "needs 'admin'"):
        client.load_model("tiny", headers=headers)
    assert_right_answer(infer_tiny(client, "tiny", X, headers=headers), tiny)


def test_the_admin_token_from_a_file_reaches_everything(secured, tokens, tiny):
    """The file token (its first line) has scope admin: the repository API and inference both answer."""
    client, headers = secured.client(), bearer(tokens["admin"])
    assert [m["name"] for m in client.get_model_repository_index(headers=headers)] == ["tiny"]
    client.unload_model("tiny", headers=headers)
    assert not client.is_model_ready("tiny", headers=headers)
    client.load_model("tiny", headers=headers)
    assert client.is_model_ready("tiny", headers=headers)
    assert_right_answer(infer_tiny(client, "tiny", X, headers=headers), tiny)


def test_health_endpoints_are_open_and_nothing_else_is(secured):
    """Liveness and readiness answer without a token (probes have none); server metadata does not."""
    client = secured.client()
    assert client.is_server_live() and client.is_server_ready()
    assert httpx.get(f"{secured.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert_json_error(httpx.get(f"{secured.url}/v2", timeout=10), 401, "bearer token")
    assert_json_error(httpx.get(f"{secured.url}/docs", timeout=10), 401, "bearer token")


def test_metrics_are_open_by_default(secured):
    """With `auth.metrics` unset, /metrics needs no token even though inference does."""
    response = httpx.get(f"{secured.url}/metrics", timeout=10)
    assert response.status_code == 200 and "hotswap_request_success_total" in response.text


def test_metrics_need_a_token_when_configured(metrics_need_infer, tokens):
    """`auth.metrics: infer`: /metrics is 401 with a challenge without a token, 200 with infer or admin."""
    url = f"{metrics_need_infer.url}/metrics"
    response = httpx.get(url, timeout=10)
    assert_json_error(response, 401, "missing bearer token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    for scope in ("infer", "admin"):
        response = httpx.get(url, headers=bearer(tokens[scope]), timeout=10)
        assert response.status_code == 200 and "hotswap_inference_count_total" in response.text
    assert httpx.get(f"{metrics_need_infer.url}/v2/health/ready", timeout=10).status_code == 200


def test_openai_routes_are_refused_in_openai_error_shape(secured, tokens):
    """/v1 needs the infer scope too, and the refusal speaks OpenAI's error shape, as openai clients parse it."""
    url = f"{secured.url}/v1/embeddings"
    body = {"model": "tiny", "input": "hello"}
    refused = httpx.post(url, json=body, timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    error = refused.json()["error"]
    assert error["code"] == "unauthorized" and "bearer token" in error["message"]
    # With the token it reaches the adapter: tiny has no text-embedding processor, which it says.
    answered = httpx.post(url, json=body, headers={"Authorization": f"Bearer {tokens['infer']}"}, timeout=10)
    assert answered.status_code == 400 and "tiny" in answered.json()["error"]["message"]
