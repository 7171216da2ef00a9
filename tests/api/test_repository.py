"""The model repository API: index states, unload and load."""

from __future__ import annotations

import json

import httpx
import pytest
import tritonclient.http as httpclient
from api_support import running_server, server_section

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.config import parse_config
from hotswap.serve.app import create_app
from hotswap.testing import skip_if_ort_provider

MODELS = ["tiny", "tiny_torch", "strings", "flaky"]


def _index(server) -> dict[str, dict]:
    r = httpx.post(f"{server.url}/v2/repository/index", timeout=10)
    assert r.status_code == 200, r.text
    entries = r.json()
    assert [e["name"] for e in entries] == MODELS
    return {e["name"]: e for e in entries}


def test_index_all_ready(server, client):
    index = _index(server)
    for name in MODELS:
        assert index[name] == {"name": name, "version": "1", "state": "READY", "reason": ""}
    assert client.get_model_repository_index() == list(index.values())


def test_index_after_unload_and_load(server, client):
    client.unload_model("strings")
    try:
        index = _index(server)
        assert index["strings"]["state"] == "UNAVAILABLE"
        assert index["strings"]["reason"] == "unloaded"
        assert all(index[name]["state"] == "READY" for name in MODELS if name != "strings")
        assert not client.is_model_ready("strings")
        client.unload_model("strings")  # unloading twice is harmless
        assert _index(server)["strings"]["state"] == "UNAVAILABLE"
    finally:
        client.load_model("strings")
    assert _index(server)["strings"]["state"] == "READY"
    assert client.is_model_ready("strings")


def test_failed_load_of_unloaded_model_is_unavailable_with_reason(server, client, tiny):
    """A load that fails leaves an unloaded model UNAVAILABLE, with the chain's reason in index and errors."""
    skip_if_ort_provider("CUDAExecutionProvider")
    client.unload_model("tiny")
    cuda = json.dumps({"backends": [{"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}]})
    try:
        with pytest.raises(httpclient.InferenceServerException) as info:
            client.load_model("tiny", config=cuda)
        assert info.value.status() == "400"
        # tritonclient reads the v2 body's "error": the whole message, not the raw JSON, starts so
        assert info.value.message().startswith("failed to load model 'tiny': ")
        assert "CUDAExecutionProvider" in info.value.message()
        entry = _index(server)["tiny"]
        assert entry["state"] == "UNAVAILABLE"
        assert "CUDAExecutionProvider" in entry["reason"]
        r = httpx.get(f"{server.url}/v2/models/tiny", timeout=10)
        assert r.status_code == 503
        assert "CUDAExecutionProvider" in r.json()["error"]
    finally:
        client.load_model("tiny")
    assert _index(server)["tiny"]["state"] == "READY"
    assert client.get_model_metadata("tiny")["backend"]["name"] == "onnxruntime"


def test_model_that_cannot_load_stops_start_up(registry, tiny, tmp_path_factory, capfd):
    """A configured model whose chain cannot load here stops start-up, and the start-up error
    carries the chain entry's own reason: the CUDA provider probe's words, not just "failed"."""
    skip_if_ort_provider("CUDAExecutionProvider")
    cuda = OnnxRuntimeBackend.Options.model_validate({"providers": ["CUDAExecutionProvider"]})
    reason = OnnxRuntimeBackend.probe(cuda)
    assert reason is not None
    config = parse_config({"server": server_section(tmp_path_factory), "models": [
        {"name": "gpu_only", "source": str(tiny.onnx), "backends": [
        {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}]}]}, "test", registry)
    with pytest.raises(RuntimeError, match=r"exited during start-up \(SystemExit: 3\)"):
        with running_server(create_app(config, registry)):
            pass
    log = capfd.readouterr().err
    assert "model 'gpu_only': no backend in its chain could load" in log
    assert f"#0 onnxruntime[CUDAExecutionProvider]: {reason}" in log
