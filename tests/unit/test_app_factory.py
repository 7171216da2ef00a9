"""create_app (serve/app.py) as the CLI calls it, and its error answers: in-process with Starlette's
TestClient (the live-server tests are in tests/api)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from starlette.requests import Request
from starlette.testclient import TestClient

from hotswap.config import HotswapConfig, parse_config
from hotswap.errors import QueueFull
from hotswap.serve.app import create_app, error_response

LOCAL = "http://127.0.0.1"  # the guard's default allowed hosts are loopback names


def test_without_a_registry_the_installed_backends_are_discovered(tiny):
    model = {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]}
    config = parse_config({"server": {"model_roots": [str(Path(tiny.onnx).parent)]}, "models": [model]}, "test")
    x = np.ones((1, 8), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    with TestClient(create_app(config), base_url=LOCAL) as client:  # the lifespan loads the model
        answer = client.post("/v2/models/tiny/infer", json=body)
    assert answer.status_code == 200, answer.text
    y = next(o for o in answer.json()["outputs"] if o["name"] == "y")
    np.testing.assert_allclose(np.array(y["data"]).reshape(1, 4), tiny.reference({"x": x})["y"], atol=1e-5)


def test_the_docs_page_is_titled_hotswap():
    page = TestClient(create_app(HotswapConfig()), base_url=LOCAL).get("/docs")
    assert page.status_code == 200 and "<title>hotswap - Swagger UI</title>" in page.text


def _request(path: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b"",
                    "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": ""})


def test_an_error_answer_keeps_its_headers_in_both_shapes():
    exc = QueueFull("queue full")
    for path in ("/v2/models/m/infer", "/v1/embeddings"):
        answer = error_response(_request(path), 503, "queue full", exc, {"Retry-After": "1"})
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "1"), path
    assert error_response(_request("/v1/embeddings"), 503, "queue full", exc).body.startswith(b'{"error":{')
