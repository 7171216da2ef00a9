"""Every error answer: HTTP status, `{"error": ...}` body naming the problem, and the
server still answers the next valid request."""

from __future__ import annotations

import json

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from api_support import infer_tiny, tiny_input

X = tiny_input(2, seed=11)


def _json_body(**overrides) -> dict:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": X.ravel().tolist()}]}
    return body | overrides


def _binary_body(header: dict, payload: bytes) -> tuple[bytes, dict]:
    head = orjson.dumps(header)
    return head + payload, {"Inference-Header-Content-Length": str(len(head)),
                            "Content-Type": "application/octet-stream"}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"}, doc
    message = doc["error"]
    assert isinstance(message, str) and message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback (most recent call last)" not in message
    return message


@pytest.fixture
def serving(server, tiny):
    """Call after an error: the next valid request on the same server still succeeds."""
    def check(model: str = "tiny") -> None:
        r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=_json_body(), timeout=10)
        assert r.status_code == 200, r.text
        z = np.array(next(o for o in r.json()["outputs"] if o["name"] == "z")["data"], np.float32)
        np.testing.assert_allclose(z.reshape(2, 1), tiny.reference({"x": X})["z"], atol=1e-5, rtol=0)

    return check


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=10, **kwargs)


INFER = "/v2/models/tiny/infer"


# -- 400: the request does not match what the model serves ------------------------------

def test_malformed_json(server, serving):
    r = post(server, INFER, content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    assert_error(r, 400, "request JSON is invalid")
    serving()


def test_json_not_an_object(server, serving):
    assert_error(post(server, INFER, json=[1, 2]), 400, "request JSON must be an object")
    serving()


@pytest.mark.parametrize("model", ["tiny", "tiny_torch"])
def test_wrong_shape(server, serving, model):
    body = _json_body(inputs=[{"name": "x", "datatype": "FP32", "shape": [2, 9], "data": [0.5] * 18}])
    assert_error(post(server, f"/v2/models/{model}/infer", json=body), 400,
                 "input 'x'", "shape [2, 9] does not match the model", "[-1, 8]")
    serving(model)


def test_wrong_rank(server, serving):
    body = _json_body(inputs=[{"name": "x", "datatype": "FP32", "shape": [16], "data": [0.5] * 16}])
    assert_error(post(server, INFER, json=body), 400, "input 'x'", "rank 1, expected rank 2")
    serving()


@pytest.mark.parametrize("model", ["tiny", "tiny_torch"])
def test_datatype_mismatch(server, serving, model):
    body = _json_body(inputs=[{"name": "x", "datatype": "INT32", "shape": [2, 8], "data": list(range(16))}])
    assert_error(post(server, f"/v2/models/{model}/infer", json=body), 400,
                 "input 'x'", "datatype INT32 does not match the model, expected FP32")
    serving(model)


def test_datatype_mismatch_binary(server, serving):
    ints = np.arange(16, dtype=np.int32)
    content, headers = _binary_body({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 8],
                                                 "parameters": {"binary_data_size": ints.nbytes}}]}, ints.tobytes())
    assert_error(post(server, INFER, content=content, headers=headers), 400,
                 "datatype INT32 does not match the model, expected FP32")
    serving()


def test_json_data_of_wrong_type(server, serving):
    body = _json_body(inputs=[{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": ["a"] * 16}])
    assert_error(post(server, INFER, json=body), 400, "input 'x'", "must be JSON numbers, got strings")
    serving()


def test_element_count_not_matching_shape(server, serving):
    body = _json_body(inputs=[{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": [0.5] * 15}])
    assert_error(post(server, INFER, json=body), 400, "input 'x'", "'data' has 15 elements but shape [2, 8] needs 16")
    serving()


def test_binary_size_not_matching_shape(server, serving):
    """binary_data_size disagrees with datatype x shape."""
    data = X.tobytes()[:60]
    content, headers = _binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8],
                                                 "parameters": {"binary_data_size": 60}}]}, data)
    assert_error(post(server, INFER, content=content, headers=headers), 400,
                 "input 'x'", "'parameters.binary_data_size' is 60 but FP32 [2, 8] needs 64")
    serving()


@pytest.mark.parametrize("supplied, word", [(60, "too few"), (68, "too many")])
def test_binary_size_not_matching_bytes_supplied(server, serving, supplied, word):
    """binary_data_size is right for the shape, but the body holds fewer or more bytes."""
    payload = (X.tobytes() + b"\0" * 8)[:supplied]
    content, headers = _binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8],
                                                 "parameters": {"binary_data_size": 64}}]}, payload)
    assert_error(post(server, INFER, content=content, headers=headers), 400,
                 f"binary input sizes add up to 64 bytes but {supplied} bytes follow the JSON header ({word})")
    serving()


def test_binary_without_header_length(server, serving):
    content, _ = _binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8],
                                           "parameters": {"binary_data_size": 64}}]}, X.tobytes())
    assert_error(post(server, INFER, content=content), 400, "Inference-Header-Content-Length")
    serving()


def test_bad_header_length(server, serving):
    r = post(server, INFER, json=_json_body(), headers={"Inference-Header-Content-Length": "abc"})
    assert_error(r, 400, "Inference-Header-Content-Length", "expected an integer")
    r = post(server, INFER, json=_json_body(), headers={"Inference-Header-Content-Length": "999999"})
    assert_error(r, 400, "Inference-Header-Content-Length is 999999")
    serving()


def test_unknown_input_name(server, serving):
    body = _json_body()
    body["inputs"].append({"name": "bogus", "datatype": "FP32", "shape": [2, 1], "data": [1.0, 2.0]})
    assert_error(post(server, INFER, json=body), 400, "input 'bogus' is not an input of this model", "expected x")
    serving()


def test_missing_input(server, serving):
    assert_error(post(server, INFER, json={"inputs": []}), 400, "input 'x' is missing")
    assert_error(post(server, INFER, json={"id": "a"}), 400, "'inputs' is missing")
    serving()


def test_unknown_requested_output(server, serving):
    body = _json_body(outputs=[{"name": "z"}, {"name": "w"}])
    assert_error(post(server, INFER, json=body), 400,
                 "requested output 'w' is not an output of model 'tiny'", "expected one of: y, z")
    serving()


def test_unknown_requested_output_tritonclient(client, serving):
    with pytest.raises(httpclient.InferenceServerException) as info:
        infer_tiny(client, "tiny", X, outputs=[httpclient.InferRequestedOutput("w")])
    assert info.value.status() == "400"
    assert "requested output 'w' is not an output" in info.value.message()
    serving()


# -- 404 ----------------------------------------------------------------------------------

def test_unknown_model(server, serving):
    assert_error(post(server, "/v2/models/nope/infer", json=_json_body()), 404,
                 "unknown model 'nope'", "tiny")
    assert_error(httpx.get(f"{server.url}/v2/models/nope", timeout=10), 404, "unknown model 'nope'")
    assert_error(httpx.get(f"{server.url}/v2/models/nope/ready", timeout=10), 404, "unknown model 'nope'")
    serving()


def test_unknown_version(server, serving):
    assert_error(post(server, "/v2/models/tiny/versions/9/infer", json=_json_body()), 404,
                 "model 'tiny' has no version '9'", "versions: 1")
    assert_error(httpx.get(f"{server.url}/v2/models/tiny/versions/9", timeout=10), 404, "no version '9'")
    r = post(server, "/v2/models/tiny/versions/1/infer", json=_json_body())
    assert r.status_code == 200, r.text
    serving()


@pytest.mark.parametrize("method, path", [("GET", "/nope"), ("POST", "/v2/models/tiny/explode"),
                                          ("GET", "/v3/models")])
def test_unknown_route(server, serving, method, path):
    r = httpx.request(method, f"{server.url}{path}", timeout=10)
    assert_error(r, 404, "Not Found", path)
    serving()


def test_wrong_method(server, serving):
    r = httpx.get(f"{server.url}{INFER}", timeout=10)
    assert_error(r, 405, "Method Not Allowed")
    serving()


# -- 503 while not ready ----------------------------------------------------------------

def test_not_ready_after_unload_then_reload(server, client, serving):
    unloaded = post(server, "/v2/repository/models/tiny/unload")
    assert (unloaded.status_code, unloaded.json()) == (200, {})
    try:
        assert_error(post(server, INFER, json=_json_body()), 503, "model 'tiny' is not ready", "unloaded")
        assert_error(httpx.get(f"{server.url}/v2/models/tiny", timeout=10), 503, "not ready")
        assert not client.is_model_ready("tiny")
        assert not client.is_server_ready()
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
        serving("tiny_torch")  # the other models keep serving
    finally:
        r = post(server, "/v2/repository/models/tiny/load")
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert client.is_model_ready("tiny")
    assert client.is_server_ready()
    serving()


# -- 500: the backend failed --------------------------------------------------------------

def _flaky_body(value: float) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [value] * 8}]}


def test_backend_failure(server, serving):
    message = assert_error(post(server, "/v2/models/flaky/infer", json=_flaky_body(5000.0)), 500, "value too large")
    assert "backend 'torch' failed" in message
    ok = post(server, "/v2/models/flaky/infer", json=_flaky_body(2.0))
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == [4.0] * 8
    serving()


def test_backend_failure_has_no_traceback(server):
    message = assert_error(post(server, "/v2/models/flaky/infer", json=_flaky_body(5000.0)), 500, "value too large")
    assert "Traceback" not in message


# -- repository API errors ----------------------------------------------------------------

def test_load_unknown_model(server, serving):
    assert_error(post(server, "/v2/repository/models/nope/load"), 404, "unknown model 'nope'")
    assert_error(post(server, "/v2/repository/models/nope/unload"), 404, "unknown model 'nope'")
    serving()


def test_load_malformed_bodies(server, serving):
    assert_error(post(server, "/v2/repository/models/tiny/load", content=b"{"), 400, "invalid JSON")
    body = {"parameters": {"config": "{not json"}}
    assert_error(post(server, "/v2/repository/models/tiny/load", json=body), 400,
                 "parameters.config: expected a JSON object string")
    body = {"parameters": {"config": json.dumps({"instances": 0})}}
    message = assert_error(post(server, "/v2/repository/models/tiny/load", json=body), 400,
                           "load request", "parameters.config.instances")
    assert not message.startswith("failed to load"), message  # a bad request, not a failed load
    serving()


@pytest.mark.parametrize(("body", "message"), [
    (b"[1]", "load request body: expected a JSON object, got list"),
    (b'{"parameters": [1]}', "parameters: expected a JSON object, got list"),
    (b'{"parameters": {"config": 5}}', "parameters.config: expected a JSON object with model config fields, got int"),
    (b'{"parameters": {"config": "[1]"}}',
     "parameters.config: expected a JSON object with model config fields, got list"),
])
def test_load_body_of_the_wrong_json_type_names_the_field(server, serving, body, message):
    response = post(server, "/v2/repository/models/tiny/load", content=body,
                    headers={"content-type": "application/json"})
    assert assert_error(response, 400) == message
    serving()
