"""The serve layer's ASGI pieces driven in-process with real ASGI messages, each test pinned by mutants
that survived the rest of the suite, or outlived its first seconds (`make mutate`, docs/TESTING.md).

The guard and the infer endpoint are plain ASGI callables: these tests call them, and the whole app of
`create_app` on the real tiny ONNX model, with a scope, a `receive` that hands out the request's
messages and a `send` that records the answer, as a server does, and read the answer whole: status,
every header (ASGI wants header names lower-case), the exact body. In-process, a mutant is caught in
milliseconds where the API suites need a uvicorn server per module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.errors import ClientClosed, ConfigError, InvalidInput, PayloadTooLarge
from hotswap.models.signature import Tensors
from hotswap.serve.app import create_app
from hotswap.serve.disconnect import EXTENSION, GONE, CancelOnDisconnect, DisconnectSignal, signal_of
from hotswap.serve.guard import Guard, allowed_hosts, check_exposure, read_tokens
from hotswap.serve.infer_endpoint import header_length, infer_target, read_body, request_timeout_s, send_answer
from hotswap.serve.request_checks import check_limits, count_rows
from hotswap.server_config import LimitsConfig, ServerConfig
from hotswap.testing import TinyModels

TOKEN_ENV = "HOTSWAP_TEST_MUTANT_TOKEN"
TOKEN = "t0ken-of-at-least-16-characters"
CHALLENGE = (b"www-authenticate", b'Bearer realm="hotswap"')
JSON = (b"content-type", b"application/json")
END = {"type": "http.request", "body": b"", "more_body": False}


class Client:
    """`receive` for one request: its messages in order, then (as a server) nothing until the client goes."""

    def __init__(self, messages: list[Message], then_disconnect: bool = False) -> None:
        self.messages = list(messages)
        self.then_disconnect = then_disconnect
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        if self.then_disconnect:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # a client that stays and sends nothing more
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def _scope(path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] = (),
           host: bytes | None = b"127.0.0.1:8000") -> Scope:
    host_header = [(b"host", host)] if host is not None else []
    return {"type": "http", "method": method, "path": path, "headers": [*host_header, *headers],
            "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000), "root_path": ""}


def _call(app, path: str = "/v2/models/tiny", headers: list[tuple[bytes, bytes]] = (),
          body: list[Message] | None = None, method: str = "GET", host: bytes | None = b"127.0.0.1:8000",
          ) -> list[Message]:
    client = Client(body or [END])
    asyncio.run(app(_scope(path, method, headers, host), client.receive, client.send))
    return client.sent


def _answer(status: int, body: bytes, *headers: tuple[bytes, bytes]) -> list[Message]:
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-length", str(len(body)).encode()), *headers]},
            {"type": "http.response.body", "body": body}]


def _guard_error(status: int, message: str, *extra: tuple[bytes, bytes]) -> list[Message]:
    """The guard's refusal: content-type first, then content-length, then any extra header."""
    raw = orjson.dumps({"error": message})
    return [{"type": "http.response.start", "status": status,
             "headers": [JSON, (b"content-length", str(len(raw)).encode()), *extra]},
            {"type": "http.response.body", "body": raw}]


async def _reached(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the guard: answers 204 when a request got through."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _server(**section) -> ServerConfig:
    return ServerConfig.model_validate(section)


@pytest.fixture
def secured(monkeypatch) -> Guard:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return Guard(_reached, _server(auth={"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}))


# --- guard: bearer tokens -------------------------------------------------------------------------------------


def test_no_token_is_the_whole_401_with_lower_case_headers_and_the_challenge(secured):
    assert _call(secured) == _guard_error(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                                          CHALLENGE)


def test_a_wrong_token_is_the_whole_401_with_the_challenge(secured):
    sent = _call(secured, headers=[(b"authorization", b"Bearer " + b"x" * 20)])
    assert sent == _guard_error(401, "invalid bearer token", CHALLENGE)


@pytest.mark.parametrize("header", [b"Bearer  " + TOKEN.encode(), b"bearer " + TOKEN.encode() + b" "])
def test_spaces_around_the_token_are_not_part_of_it(secured, header):
    """The scheme ends at the first space; the token is what follows, stripped."""
    assert _call(secured, headers=[(b"authorization", header)])[0]["status"] == 204


def test_an_infer_token_is_refused_admin_paths_and_metrics_follow_auth_metrics(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    tokens = {"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}
    infer = [(b"authorization", b"Bearer " + TOKEN.encode())]
    guard = Guard(_reached, _server(auth=tokens | {"metrics": "admin"}))
    assert _call(guard, "/v2/repository/index", infer) == _guard_error(
        403, "this token's scope is 'infer'; this endpoint needs 'admin'")
    assert _call(guard, "/metrics", infer)[0]["status"] == 403
    assert _call(guard, "/v2/health/ready")[0]["status"] == 204
    assert _call(Guard(_reached, _server(auth=tokens)), "/metrics")[0]["status"] == 204


# --- guard: tokens, hosts and exposure at start-up -----------------------------------------------------------------


def _tokens_config(*sources: dict) -> ServerConfig:
    return _server(auth={"tokens": list(sources)})


def test_tokens_are_read_from_the_environment_and_from_a_file_s_first_line(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, f"  {TOKEN}\n")
    token_file = tmp_path / "admin.token"
    token_file.write_text("\n  a-file-token-0123456789  \nsecond line\n")
    assert read_tokens(_tokens_config({"scope": "infer", "env": TOKEN_ENV}, {"scope": "admin", "file": str(token_file)})
                       ) == {TOKEN: "infer", "a-file-token-0123456789": "admin"}


def test_a_token_of_exactly_16_characters_is_enough(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "x" * 16)
    assert read_tokens(_tokens_config({"scope": "admin", "env": TOKEN_ENV})) == {"x" * 16: "admin"}
    monkeypatch.setenv(TOKEN_ENV, "x" * 15)
    with pytest.raises(ConfigError) as info:
        read_tokens(_tokens_config({"scope": "admin", "env": TOKEN_ENV}))
    assert str(info.value) == "server.auth.tokens.0: a token needs at least 16 characters"


@pytest.mark.parametrize("value", [None, "   "])
def test_an_unset_or_blank_token_variable_is_named(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, value)
    config = _tokens_config({"scope": "infer", "env": TOKEN_ENV})
    with pytest.raises(ConfigError) as info:
        read_tokens(config)
    assert str(info.value) == f"server.auth.tokens.0.env: environment variable {TOKEN_ENV} is not set or empty"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_token_file_is_named(tmp_path, monkeypatch, content):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_tokens(_tokens_config({"scope": "infer", "env": TOKEN_ENV}, {"scope": "admin", "file": str(path)}))
    assert str(info.value) == f"server.auth.tokens.1.file: cannot read a token from {path}"


def test_allowed_hosts_are_lower_case_loopback_by_default_and_star_is_any():
    assert allowed_hosts(_server()) == frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
    assert allowed_hosts(_server(allowed_hosts=["Example.COM", "b.example"])) == frozenset({"example.com", "b.example"})
    assert allowed_hosts(_server(allowed_hosts=["a.example", "*"])) is None
    assert allowed_hosts(_server(host="0.0.0.0")) is None


def test_exposure_without_tokens_is_refused_unless_anonymous_is_explicit(monkeypatch):
    with pytest.raises(ConfigError) as info:
        check_exposure(_server(host="0.0.0.0"))
    assert str(info.value) == (
        "server.host: 0.0.0.0 is reachable from other machines but server.auth.tokens is empty; add tokens, "
        "or set server.auth.allow_anonymous: true to serve without them")
    check_exposure(_server(host="0.0.0.0", auth={"allow_anonymous": True}))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    check_exposure(_server(host="0.0.0.0", auth={"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}))


# --- guard: Host header --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "status"), [
    (b"127.0.0.1:8000", 204), (b"LOCALHOST", 204), (b"[::1]", 204), (b"[::1]:8000", 204), (b"localhost:80", 204),
    (b"evil.example", 400), (b"127.0.0.1.evil.example:8000", 400)])
def test_the_host_check_strips_the_port_and_keeps_ipv6_brackets(host, status):
    assert _call(Guard(_reached, _server()), host=host)[0]["status"] == status


def test_a_refused_host_is_named_whole():
    guard = Guard(_reached, _server(allowed_hosts=["api.example"]))
    assert _call(guard, host=b"Evil.Example:80") == _guard_error(
        400, "Host 'evil.example:80' is not in server.allowed_hosts")
    assert _call(guard, host=None) == _guard_error(400, "Host '' is not in server.allowed_hosts")
    assert _call(guard, host=b"API.example:443")[0]["status"] == 204


@pytest.mark.parametrize(("length", "status"), [(b"1024", 204), (b"1025", 413), (b"12a", 413), (b"-1", 413)])
def test_content_length_is_checked_before_the_body(length, status):
    guard = Guard(_reached, _server(limits={"max_body_bytes": 1024}))
    sent = _call(guard, headers=[(b"content-length", length)])
    if status == 204:
        assert sent[0]["status"] == 204
    else:
        assert sent == _guard_error(413, f"body of {length.decode()} bytes exceeds server.limits.max_body_bytes=1024")


def test_a_refusal_on_an_openai_path_has_openai_s_error_shape(secured):
    raw = orjson.dumps({"error": {"message": "missing bearer token: send 'Authorization: Bearer <token>'",
                                  "type": "authentication_error", "param": None, "code": "unauthorized"}})
    sent = _call(secured, "/v1/embeddings")
    assert sent[0]["status"] == 401 and orjson.loads(sent[1]["body"]) == orjson.loads(raw)


# --- guard: the body as the app reads it ---------------------------------------------------------------------------


def _reader(record: list):
    """An app that reads the body to its end, then receive()s once more, and records what it got."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        size = 0
        try:
            while True:
                message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            record.append(("body", size))
            record.append(("after", (await receive())["type"]))
        except Exception as exc:  # noqa: BLE001 - what the guard raised is the observation
            record.append((type(exc).__name__, str(exc)))
        await _reached(scope, receive, send)

    return app


def _read_through_guard(chunks: list[Message], timeout_s: float = 30.0, disconnect: bool = True) -> list:
    record: list = []
    guard = Guard(_reader(record), _server(limits={"max_body_bytes": 1024, "body_timeout_s": timeout_s}))
    client = Client(chunks, then_disconnect=disconnect)

    async def go() -> None:
        await asyncio.wait_for(guard(_scope("/v2/models/tiny/infer"), client.receive, client.send), 10)

    asyncio.run(go())
    return record


def _chunk(size: int, more: bool | None) -> Message:
    message: Message = {"type": "http.request", "body": b"x" * size}
    if more is not None:
        message["more_body"] = more
    return message


def test_a_body_of_exactly_max_body_bytes_passes_and_a_disconnect_after_it_reaches_the_app():
    assert _read_through_guard([_chunk(600, True), _chunk(424, None)]) == [("body", 1024), ("after", "http.disconnect")]


def test_chunks_are_counted_together_against_max_body_bytes():
    assert _read_through_guard([_chunk(600, True), _chunk(425, False)]) == [
        ("PayloadTooLarge", "body exceeds server.limits.max_body_bytes=1024")]
    assert _read_through_guard([_chunk(1025, False)]) == [
        ("PayloadTooLarge", "body exceeds server.limits.max_body_bytes=1024")]


def test_a_disconnect_before_the_whole_body_is_client_closed():
    assert _read_through_guard([_chunk(10, True)]) == [
        ("ClientClosed", "the client disconnected before sending its whole body")]


def test_a_body_that_does_not_come_in_time_is_408():
    assert _read_through_guard([_chunk(10, True)], timeout_s=0.05, disconnect=False) == [
        ("BodyTimeout", "request body not received within server.limits.body_timeout_s=0.05")]


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
    asyncio.run(send_answer(client.send, 201, b"{}", {"Content-Type": "application/json", "X-Thing": "\xe9"}))
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


# --- disconnect ----------------------------------------------------------------------------------------------------


def test_a_signal_starts_unfired_calls_its_listener_once_and_fires_with_none():
    signal = DisconnectSignal()
    assert signal.fired is False
    signal.fire()  # nobody listening: nothing to call
    assert signal.fired is True
    calls: list[int] = []
    again = DisconnectSignal()
    again.on_fire(lambda: calls.append(1))
    again.fire()
    again.fire()
    assert calls == [1] and again.fired is True


def test_signal_of_reads_the_scope_extension():
    signal = DisconnectSignal()
    assert signal_of({"extensions": {EXTENSION: signal}}) is signal
    assert signal_of({"extensions": {}}) is None
    assert signal_of({"extensions": None}) is None
    assert signal_of({}) is None
    assert signal_of(None) is None


async def _guarded(scope: Scope | None, receive: Receive | None, work_s: float) -> str:
    async with CancelOnDisconnect(scope, receive):
        await asyncio.sleep(work_s)
        return "done"


def _outcome(scope: Scope | None, receive: Receive | None, work_s: float, fire_after_s: float | None = None) -> str:
    async def go() -> str:
        if fire_after_s is not None:
            asyncio.get_running_loop().call_later(fire_after_s, scope["extensions"][EXTENSION].fire)
        try:
            return await asyncio.wait_for(_guarded(scope, receive, work_s), 5)
        except ClientClosed as exc:
            return f"ClientClosed: {exc}"

    return asyncio.run(go())


def test_without_a_signal_a_disconnect_from_receive_ends_the_request():
    client = Client([{"type": "http.request", "body": b"late"}], then_disconnect=True)
    assert _outcome({}, client.receive, 30) == f"ClientClosed: {GONE}"


def test_without_a_signal_more_body_after_the_body_is_not_a_disconnect():
    client = Client([{"type": "http.request", "body": b"late"}])
    assert _outcome({}, client.receive, 0.01) == "done"


def test_a_signal_fired_before_or_during_the_request_ends_it():
    fired = DisconnectSignal()
    fired.fire()
    assert _outcome({"extensions": {EXTENSION: fired}}, None, 30) == f"ClientClosed: {GONE}"
    assert _outcome({"extensions": {EXTENSION: DisconnectSignal()}}, None, 30, fire_after_s=0.01) == (
        f"ClientClosed: {GONE}")
    assert _outcome({"extensions": {EXTENSION: DisconnectSignal()}}, None, 0.01) == "done"


def test_a_cancellation_for_another_reason_passes_through_as_itself():
    async def go() -> str:
        task = asyncio.create_task(_guarded({"extensions": {EXTENSION: DisconnectSignal()}}, None, 30))
        await asyncio.sleep(0.01)
        task.cancel()  # shutdown, say: the client is still there
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except ClientClosed:
            return "ClientClosed"
        return "done"

    assert asyncio.run(go()) == "cancelled"


def test_with_a_signal_nobody_waits_on_receive():
    calls: list[int] = []

    async def receive() -> Message:
        calls.append(1)
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    assert _outcome({"extensions": {EXTENSION: DisconnectSignal()}}, receive, 0.01) == "done"
    assert calls == [], "a task waited on receive() although the protocol's signal was there"


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
