"""The infer endpoint in-process with real ASGI messages, pinned by mutants (`make mutate`, docs/TESTING.md):
its pieces (target path, timeout, binary header length, body reading, the answer's headers), the request
checks on rows and bytes elements, and the whole `create_app` app on the real tiny ONNX model, every answer
read whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.types import Message

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.errors import ClientClosed, InvalidInput, PayloadTooLarge
from hotswap.models.signature import Tensors
from hotswap.serve.app import create_app
from hotswap.serve.disconnect import EXTENSION, GONE, DisconnectSignal
from hotswap.serve.infer_endpoint import header_length, infer_target, read_body, request_timeout_s, send_answer
from hotswap.serve.request_checks import check_limits, count_rows
from hotswap.server_config import LimitsConfig
from hotswap.testing import TinyModels
from tests.unit.mutants_serve_support import END, JSON, Client, _chunk, _scope


def _answer(status: int, body: bytes, *headers: tuple[bytes, bytes]) -> list[Message]:
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-length", str(len(body)).encode()), *headers]},
            {"type": "http.response.body", "body": body}]


# --- infer endpoint: the pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "target"), [
    ("/v2/models/a/infer", ("a", None)), ("/v2/models/a/versions/2/infer", ("a", "2")),
    ("/v2/models//infer", None), ("/v2/models/a/b/infer", None), ("/v2/models/a/b/c/infer", None),
    ("/v2/models//versions/2/infer", None), ("/v2/models/a/versions//infer", None), ("/v2/models/a", None),
    ("/v1/models/a/infer", None)])
def test_infer_target(path, target):
    assert infer_target(path) == target


def test_request_timeout_is_in_microseconds():
    assert request_timeout_s({}) is None
    assert request_timeout_s({"timeout": 2_000_000}) == 2.0
    assert request_timeout_s({"timeout": 0.5}) == 0.5e-6


@pytest.mark.parametrize("value", [0, -1, True, "5", [1]])
def test_a_timeout_that_is_not_a_positive_number_is_refused_whole(value):
    with pytest.raises(InvalidInput) as info:
        request_timeout_s({"timeout": value})
    assert str(info.value) == f"parameters.timeout: expected a positive number of microseconds, got {value!r}"


def test_the_binary_header_length_is_read_or_refused_whole():
    assert header_length(_scope("/", headers=[(b"inference-header-content-length", b"12")])) == 12
    assert header_length(_scope("/")) is None
    with pytest.raises(InvalidInput) as info:
        header_length(_scope("/", headers=[(b"inference-header-content-length", b"twelve\xe9")]))
    assert str(info.value) == "header Inference-Header-Content-Length: expected an integer, got 'twelve\xe9'"


def test_read_body_joins_chunks_with_or_without_a_body_key():
    chunks = [{"type": "http.request", "more_body": True}, {"type": "http.request", "body": b"ab", "more_body": True},
              {"type": "http.request", "more_body": True}, {"type": "http.request", "body": b"cd"}]
    assert asyncio.run(read_body(Client(chunks).receive)) == b"abcd"
    assert asyncio.run(read_body(Client([{"type": "http.request"}]).receive)) == b""
    assert asyncio.run(read_body(Client([{"type": "http.request", "body": b"one", "more_body": False}]).receive)
                       ) == b"one"


@pytest.mark.parametrize("chunks", [[], [_chunk(3, True)]])
def test_read_body_says_when_the_client_left_before_the_end(chunks):
    with pytest.raises(ClientClosed) as info:
        asyncio.run(read_body(Client(chunks, then_disconnect=True).receive))
    assert str(info.value) == "the client disconnected before sending its whole body"


def test_send_answer_lower_cases_header_names_after_the_length():
    client = Client([])
    asyncio.run(send_answer(client.send, 201, b"{}", {"Content-Type": "application/json", "X-Thing": "\xe9"}, {}))
    assert client.sent == _answer(201, b"{}", JSON, (b"x-thing", b"\xe9"))


# --- infer endpoint on the real app --------------------------------------------------------------------------------


class ListOutputs(OnnxRuntimeBackend):
    """A backend that breaks the contract: lists for outputs. What the server does with a fault it
    did not foresee, with a real onnxruntime session underneath."""

    name = "list-outputs"

    def run(self, inputs: Tensors) -> Tensors:
        return {name: value.tolist() for name, value in super().run(inputs).items()}  # type: ignore[misc]


@pytest.fixture(scope="module")
def registry() -> BackendRegistry:
    found = discover_backends()
    return BackendRegistry(available={**found.available, "list-outputs": ListOutputs}, failed=dict(found.failed),
                           distributions=dict(found.distributions))


@asynccontextmanager
async def _app(registry: BackendRegistry, tiny: TinyModels, **server) -> AsyncIterator[object]:
    models = [{"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]},
              {"name": "broken", "source": str(tiny.onnx), "backends": [{"name": "list-outputs"}]}]
    section = {"model_control": "explicit", "model_roots": [str(Path(tiny.onnx).parent)]} | server
    app = create_app(parse_config({"server": section, "models": models}, "test", registry), registry)
    plane = app.state.dataplane
    await plane.repository.load_all()
    try:
        yield app
    finally:
        await plane.close()


def _request(x: np.ndarray, **parameters) -> bytes:
    doc: dict = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    if parameters:
        doc["parameters"] = parameters
    return orjson.dumps(doc)


async def _post(app, path: str, chunks: list[Message], headers: list[tuple[bytes, bytes]] = (),
                method: str = "POST", extensions: dict | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
    client = Client(chunks)
    scope = _scope(path, method, headers)
    if extensions is not None:
        scope["extensions"] = extensions
    await app(scope, client.receive, client.send)
    start, body = client.sent
    names = [name for name, _ in start["headers"]]
    assert names == [name.lower() for name in names]
    return start["status"], dict(start["headers"]), body["body"]


X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


def test_infer_in_chunks_by_name_and_version_answers_the_reference(registry, tiny):
    body = _request(X)
    chunks = [{"type": "http.request", "more_body": True}, _chunk(0, True) | {"body": body[:7]},
              {"type": "http.request", "body": body[7:]}]

    async def go():
        async with _app(registry, tiny) as app:
            return [await _post(app, path, list(chunks)) for path in
                    ("/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer")]

    for status, headers, raw in asyncio.run(go()):
        assert status == 200, raw
        assert headers[b"content-type"] == b"application/json" and headers[b"content-length"] == str(len(raw)).encode()
        doc = orjson.loads(raw)
        assert doc["model_name"] == "tiny" and doc["model_version"] == "1"
        y = {o["name"]: o for o in doc["outputs"]}["y"]
        np.testing.assert_allclose(np.array(y["data"]).reshape(y["shape"]), tiny.reference({"x": X})["y"],
                                   rtol=0, atol=1e-5)


def test_infer_errors_are_whole_json_with_retry_after_only_on_503(registry, tiny):
    async def go():
        async with _app(registry, tiny) as app:
            good, bad = [{"type": "http.request", "body": _request(X)}], [{"type": "http.request",
                                                                         "body": _request(X, timeout=-1)}]
            answers = [await _post(app, "/v2/models/tiny/versions/7/infer", [END]),
                       await _post(app, "/v2/models/tiny/infer", bad),
                       await _post(app, "/v2/models/broken/infer", list(good)),
                       await _post(app, "/v2/models/tiny/infer", [END], method="GET")]
            await app.state.dataplane.unload("tiny")
            answers.append(await _post(app, "/v2/models/tiny/infer", list(good)))
            return answers

    missing_version, bad_timeout, broken, wrong_method, unloaded = asyncio.run(go())
    assert missing_version[0] == 404
    timeout_error = b'{"error":"parameters.timeout: expected a positive number of microseconds, got -1"}'
    assert bad_timeout == (400, {b"content-length": str(len(timeout_error)).encode(),
                                 b"content-type": b"application/json"}, timeout_error)
    internal = b'{"error":"internal error (AttributeError); details are in the server log"}'
    assert broken == (500, {b"content-length": str(len(internal)).encode(), b"content-type": b"application/json"},
                      internal)
    not_allowed = b'{"error":"Method Not Allowed: GET /v2/models/tiny/infer; expected POST"}'
    assert wrong_method == (405, {b"content-length": str(len(not_allowed)).encode(),
                                  b"content-type": b"application/json", b"allow": b"POST"}, not_allowed)
    assert unloaded[0] == 503 and unloaded[1] == {b"content-length": str(len(unloaded[2])).encode(),
                                                  b"content-type": b"application/json", b"retry-after": b"1"}
    assert set(orjson.loads(unloaded[2])) == {"error"}


def test_the_server_s_disconnect_signal_reaches_the_request(registry, tiny):
    """Under hotswap's own protocol the scope carries the connection's signal: a client gone (signal
    fired) is not computed, even though receive() never says so."""
    gone = DisconnectSignal()
    gone.fire()

    async def go():
        async with _app(registry, tiny) as app:
            return await _post(app, "/v2/models/tiny/infer", [{"type": "http.request", "body": _request(X)}],
                               extensions={EXTENSION: gone})

    body = orjson.dumps({"error": GONE})
    assert asyncio.run(go()) == (499, {b"content-length": str(len(body)).encode(),
                                       b"content-type": b"application/json"}, body)


# --- request checks ------------------------------------------------------------------------------------------------


def test_rows_are_dim_0_of_the_first_input_and_at_least_one():
    assert count_rows({"x": np.zeros((3, 8), np.float32), "m": np.zeros((5,), np.int64)}) == 3
    for inputs in ({}, {"x": np.array(1.0, np.float32)}):
        with pytest.raises(InvalidInput) as info:
            count_rows(inputs)
        assert str(info.value) == "inputs need a batch dimension (dim 0)"
    with pytest.raises(InvalidInput) as info:
        count_rows({"x": np.zeros((0, 8), np.float32), "y": np.zeros((1, 8), np.float32)})
    assert str(info.value) == "input 'x': shape [0, 8] has 0 rows; expected at least 1"


LIMITS = LimitsConfig(max_rows=4, max_bytes_element=5)


def test_max_rows_is_the_most_rows_allowed():
    check_limits({"x": np.zeros((4, 8), np.float32)}, 4, LIMITS)
    with pytest.raises(PayloadTooLarge) as info:
        check_limits({"x": np.zeros((5, 8), np.float32)}, 5, LIMITS)
    assert str(info.value) == "request has 5 rows; server.limits.max_rows is 4"


def test_max_bytes_element_is_the_largest_bytes_element_of_any_bytes_input():
    numbers = np.full((2, 3), 1e30, np.float64)  # numbers are not measured, however large
    fits = np.array([[b"12345", b""], [b"1", b"22"]], dtype=object)
    empty = np.empty((1, 0), dtype=object)
    check_limits({"n": numbers, "s": fits, "e": empty}, 2, LIMITS)
    too_long = np.array([b"1", b"123456", b"12"], dtype=object)
    with pytest.raises(PayloadTooLarge) as info:
        check_limits({"n": numbers, "s": fits, "t": too_long}, 3, LIMITS)
    assert str(info.value) == "input 't': an element of 6 bytes exceeds server.limits.max_bytes_element=5"
