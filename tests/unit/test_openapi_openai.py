"""The OpenAI-compatible embedding and model routes as the app describes and installs them
(serve/openai_routes.py `install`, `OpenAIState`): each route's method, answer schema and OpenAI
error answers in /openapi.json, the hand-decoded embeddings body documented, and the per-app state
with its request counter on the app's registry. Live requests: tests/api/test_openai_tiny.py and
test_openai_embeddings.py."""

from __future__ import annotations

import time

import pytest

from hotswap.backends.registry import BackendRegistry
from hotswap.config import HotswapConfig
from hotswap.serve.app import create_app

OPENAI_ERRORS = {"400", "401", "403", "404", "503"}
ROUTES = {  # path: (method, handler, answer component)
    "/v1/embeddings": ("post", "create_embeddings", "EmbeddingResponse"),
    "/v1/models": ("get", "list_models", "ModelList"),
    "/v1/models/{model}": ("get", "retrieve_model", "ModelCard"),
}


@pytest.fixture
def app():
    # Built for each test: `make mutate` maps a function to the tests that ran it.
    return create_app(HotswapConfig(), BackendRegistry())


def test_each_route_has_its_method_handler_tag_and_answer_schema(app) -> None:
    paths = app.openapi()["paths"]
    for path, (method, handler, component) in ROUTES.items():
        assert list(paths[path]) == [method], path
        op = paths[path][method]
        assert op["operationId"].startswith(f"{handler}_"), op["operationId"]
        assert op["tags"] == ["OpenAI"], path
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{component}"}, path


def test_each_route_answers_errors_in_openais_shape(app) -> None:
    paths = app.openapi()["paths"]
    for path, (method, _, _) in ROUTES.items():
        responses = paths[path][method]["responses"]
        extra = {"413", "504"} if path == "/v1/embeddings" else set()
        errors = set(responses) - {"200", "422"}
        assert errors == OPENAI_ERRORS | extra, path
        for code in errors:
            assert responses[code]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/OpenAIErrorResponse"}, (path, code)


def test_the_embeddings_body_is_documented_though_decoded_by_hand(app) -> None:
    body = app.openapi()["paths"]["/v1/embeddings"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["title"] == "EmbeddingRequest" and {"model", "input"} <= set(schema["properties"])


def test_the_openai_state_counts_requests_on_the_apps_registry(app) -> None:
    state = app.state.openai
    assert abs(state.created - time.time()) < 60
    state.requests.labels("tiny", "200").inc()
    registry = app.state.dataplane.metrics.registry
    assert registry.get_sample_value("hotswap_openai_requests_total", {"model": "tiny", "status": "200"}) == 1
    family = next(f for f in registry.collect() if f.name == "hotswap_openai_requests")
    assert family.documentation == "Requests to /v1/embeddings, by model and HTTP status."
