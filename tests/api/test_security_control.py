"""The repository control plane: off by default, JSON only, never from a web page, never a new source."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from api_support import LiveServer, infer_tiny, server_section, tiny_input
from security_support import assert_json_error, serve, triton_error

X = tiny_input(2, seed=3)
EVIL_ORIGIN = "http://evil.example"


@pytest.fixture(scope="module")
def locked(registry, model_configs, tmp_path_factory) -> Iterator[LiveServer]:
    """`server.model_control` left at its default (none)."""
    roots = server_section(tmp_path_factory)["model_roots"]
    with serve(registry, {"model_roots": roots}, [model_configs["tiny"]]) as live:
        yield live


@pytest.fixture(scope="module")
def explicit(registry, model_configs, tmp_path_factory) -> Iterator[LiveServer]:
    """`server.model_control: explicit`."""
    with serve(registry, server_section(tmp_path_factory), [model_configs["tiny"]]) as live:
        yield live


def assert_serves(live: LiveServer, tiny) -> None:
    result = infer_tiny(live.client(), "tiny", X)
    np.testing.assert_allclose(result.as_numpy("z"), tiny.reference({"x": X})["z"], atol=1e-5, rtol=0)


def test_default_model_control_refuses_load_and_unload(locked, tiny):
    """With model_control none, load and unload are 403 naming server.model_control; the model keeps serving."""
    client = locked.client()
    with triton_error(403, "server.model_control"):
        client.unload_model("tiny")
    with triton_error(403, "server.model_control"):
        client.load_model("tiny", config=json.dumps({"instances": 2}))
    assert client.is_model_ready("tiny")
    assert [m["state"] for m in client.get_model_repository_index()] == ["READY"]  # reading the index is fine
    assert_serves(locked, tiny)


def test_a_non_json_load_or_unload_is_415(explicit, tiny):
    """text/plain and form bodies (what a cross-site form can send without a preflight) get 415."""
    url = f"{explicit.url}/v2/repository/models/tiny"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        for action in ("load", "unload"):
            response = httpx.post(f"{url}/{action}", content=b"{}", headers={"Content-Type": content_type},
                                  timeout=30)
            assert_json_error(response, 415, "Content-Type", content_type.split(";")[0])
    assert_serves(explicit, tiny)
    ok = httpx.post(f"{url}/load", content=b"{}", headers={"Content-Type": "application/json; charset=utf-8"},
                    timeout=60)
    assert ok.status_code == 200, ok.text


def test_a_load_or_unload_from_a_web_page_is_403(explicit, tiny):
    """Any Origin header (a browser's fetch) is refused on load and unload, whatever the body."""
    client = explicit.client()
    with triton_error(403, EVIL_ORIGIN):
        client.load_model("tiny", headers={"Origin": EVIL_ORIGIN})
    with triton_error(403, EVIL_ORIGIN):
        client.unload_model("tiny", headers={"Origin": EVIL_ORIGIN})
    response = httpx.post(f"{explicit.url}/v2/repository/models/tiny/unload", timeout=30,
                          headers={"Origin": "null", "Content-Type": "application/json"})
    assert_json_error(response, 403, "'null'")
    assert client.is_model_ready("tiny")
    assert_serves(explicit, tiny)


@pytest.mark.parametrize("field, value", [
    ("source", "/etc/passwd"),
    ("processor", {"name": "text-embedding"}),
    ("inputs", [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]),
    ("name", "other"),
])
def test_a_load_override_may_change_only_backends_batching_instances(explicit, tiny, field, value):
    """An override naming any other field is 400 naming that field; the running model is untouched."""
    client = explicit.client()
    before = client.get_model_metadata("tiny")
    with triton_error(400, f"cannot change {field}", "backends, batching, instances"):
        client.load_model("tiny", config=json.dumps({field: value, "batching": {"max_batch_size": 4}}))
    assert client.get_model_metadata("tiny") == before
    assert_serves(explicit, tiny)


def test_an_allowed_override_still_loads(explicit, tiny):
    """The refusals above are specific: an override of batching and instances is applied."""
    client = explicit.client()
    client.load_model("tiny", config=json.dumps({"batching": {"max_batch_size": 4}, "instances": 2}))
    metadata = client.get_model_metadata("tiny")
    assert metadata["batching"]["max_batch_size"] == 4 and metadata["backend"]["instances"] == 2
    assert_serves(explicit, tiny)
