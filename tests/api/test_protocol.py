"""The v2 protocol as the real tritonclient.http speaks it, against a live server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from api_support import infer_tiny, tiny_input

ATOL = 1e-5


def test_health_and_server_metadata(client: httpclient.InferenceServerClient):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "hotswap"
    assert meta["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


@pytest.mark.parametrize("model, backend, platform", [
    ("tiny", "onnxruntime", "onnxruntime_onnx"),
    ("tiny_torch", "torch", "torch_pt2"),
])
def test_model_metadata(client, model, backend, platform):
    meta = client.get_model_metadata(model)
    assert meta["name"] == model
    assert meta["versions"] == ["1"]
    assert meta["platform"] == platform
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                               {"name": "z", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["backend"]["name"] == backend
    assert meta["backend"]["device"] == "cpu"
    assert meta["backend"]["chain_position"] == 0
    assert meta["backend"]["instances"] == 1
    assert meta["skipped"] == []
    assert client.get_model_metadata(model, model_version="1") == meta


def test_model_ready(client, server):
    for model in ("tiny", "tiny_torch", "strings", "flaky"):
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, model_version="1")
    assert not client.is_model_ready("tiny", model_version="9")
    assert not client.is_model_ready("no_such_model")
    for path in ("/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        response = httpx.get(f"{server.url}{path}", timeout=10)
        assert (response.status_code, response.json()) == (200, {"name": "tiny", "ready": True})


@pytest.mark.parametrize("model", ["tiny", "tiny_torch"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["bin_in", "json_in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin_out", "json_out"])
def test_infer_matches_reference(client, tiny, model, binary_in, binary_out):
    x = tiny_input(5, seed=3)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in ("y", "z")]
    result = infer_tiny(client, model, x, binary=binary_in, outputs=outputs)
    want = tiny.reference({"x": x})
    for name in ("y", "z"):
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == want[name].shape
        np.testing.assert_allclose(got, want[name], atol=ATOL, rtol=0, err_msg=name)
    response = result.get_response()
    assert response["model_name"] == model
    assert response["model_version"] == "1"
    for out in response["outputs"]:
        assert ("parameters" in out and "binary_data_size" in out["parameters"]) == binary_out
        assert ("data" in out) == (not binary_out)


def test_infer_all_outputs_by_default(client, tiny):
    x = tiny_input(1, seed=4)
    result = infer_tiny(client, "tiny", x)  # no outputs requested: all of them, binary by default
    assert [o["name"] for o in result.get_response()["outputs"]] == ["y", "z"]
    np.testing.assert_allclose(result.as_numpy("y"), tiny.reference({"x": x})["y"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("binary_out", [True, False])
def test_output_selection(client, tiny, binary_out):
    x = tiny_input(3, seed=5)
    result = infer_tiny(client, "tiny", x, outputs=[httpclient.InferRequestedOutput("z", binary_data=binary_out)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["z"]
    assert result.get_output("y") is None
    assert result.as_numpy("y") is None
    np.testing.assert_allclose(result.as_numpy("z"), tiny.reference({"x": x})["z"], atol=ATOL, rtol=0)


def test_request_id_echoed(client):
    result = infer_tiny(client, "tiny", tiny_input(1), request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    result = infer_tiny(client, "tiny", tiny_input(1))
    assert "id" not in result.get_response()


def test_infer_by_version(client, tiny):
    x = tiny_input(2, seed=6)
    result = infer_tiny(client, "tiny", x, model_version="1")
    np.testing.assert_allclose(result.as_numpy("z"), tiny.reference({"x": x})["z"], atol=ATOL, rtol=0)


def test_large_batch(client, tiny):
    x = tiny_input(300, seed=7)  # above max_batch_size: runs alone
    result = infer_tiny(client, "tiny_torch", x)
    np.testing.assert_allclose(result.as_numpy("y"), tiny.reference({"x": x})["y"], atol=ATOL, rtol=0)


TEXTS = ["hello", "", "h\u00e9llo w\u00f6rld \u2603", "x" * 300]


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin_in", "json_in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin_out", "json_out"])
def test_bytes_round_trip(client, binary_in, binary_out):
    text = np.array([t.encode("utf-8") for t in TEXTS], dtype=object)
    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary_in)
    result = client.infer("strings", [inp],
                          outputs=[httpclient.InferRequestedOutput("echo", binary_data=binary_out)])
    out = result.get_response()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [len(TEXTS)]
    got = result.as_numpy("echo")
    got = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in got.tolist()]
    assert got == text.tolist()


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin_in", "json_in"])
def test_bytes_input_accepted(client, binary_in):
    """A BYTES input reaches the backend and a BYTES output of the same shape comes back."""
    text = np.array([t.encode("utf-8") for t in TEXTS], dtype=object)
    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary_in)
    result = client.infer("strings", [inp])
    out = result.get_response()["outputs"][0]
    assert out["name"] == "echo" and out["datatype"] == "BYTES" and out["shape"] == [len(TEXTS)]
    assert result.as_numpy("echo").shape == (len(TEXTS),)


def test_raw_json_request_and_response(server, tiny):
    """A hand-written all-JSON request (no tritonclient) gets an all-JSON response."""
    x = tiny_input(2, seed=8)
    body = {"id": "raw", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": x.tolist()}]}
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["id"] == "raw" and doc["model_name"] == "tiny"
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["y"]["shape"] == [2, 4] and outs["z"]["shape"] == [2, 1]
    want = tiny.reference({"x": x})
    np.testing.assert_allclose(np.array(outs["y"]["data"], np.float32).reshape(2, 4), want["y"], atol=ATOL, rtol=0)
