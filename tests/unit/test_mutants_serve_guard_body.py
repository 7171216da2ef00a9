"""The guard's bound on a request body, in-process with real ASGI messages and pinned by mutants (`make
mutate`, docs/TESTING.md): a Content-Length checked before the body, then the body as the app reads it
(exactly max_body_bytes, chunks counted together, a disconnect mid-body, a client too slow: 408)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from hotswap.serve.guard import BODY_RECEIVED, Guard
from tests.unit.mutants_serve_support import Client, _call, _chunk, _guard_error, _reached, _scope, _server

# --- guard: Content-Length -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "status"), [(b"1024", 204), (b"1025", 413), (b"12a", 413), (b"-1", 413)])
def test_content_length_is_checked_before_the_body(length, status):
    guard = Guard(_reached, _server(limits={"max_body_bytes": 1024}))
    sent = _call(guard, headers=[(b"content-length", length)])
    if status == 204:
        assert sent[0]["status"] == 204
    else:
        assert sent == _guard_error(413, f"body of {length.decode()} bytes exceeds server.limits.max_body_bytes=1024")


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


# --- guard: a body the server says is all here ---------------------------------------------------------------------


def _receive_seen(headers: list[tuple[bytes, bytes]], extensions: dict, chunks: list[Message]) -> tuple[bool, list]:
    """(whether the app got the server's own receive, what the app read) through a 1 KiB guard."""
    seen: list = []
    record: list = []
    client = Client(chunks, then_disconnect=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(receive == client.receive)
        await _reader(record)(scope, receive, send)

    guard = Guard(app, _server(limits={"max_body_bytes": 1024}))
    scope = {**_scope("/v2/models/tiny/infer", headers=headers), "extensions": extensions}
    asyncio.run(guard(scope, client.receive, client.send))
    return seen[0], record


def test_a_body_received_whole_with_an_allowed_length_reaches_the_app_unwrapped():
    unwrapped, record = _receive_seen([(b"content-length", b"1024")], {BODY_RECEIVED: True}, [_chunk(1024, False)])
    assert unwrapped and record == [("body", 1024), ("after", "http.disconnect")]


@pytest.mark.parametrize(("headers", "extensions"), [
    ([], {BODY_RECEIVED: True}),  # chunked: only counting bounds it, however it arrived
    ([(b"content-length", b"1024")], {}),  # not all here yet: the body deadline still runs
    ([(b"content-length", b"1024")], {BODY_RECEIVED: False}),
])
def test_any_other_body_is_read_through_the_bounds(headers, extensions):
    unwrapped, record = _receive_seen(headers, extensions, [_chunk(1000, True), _chunk(25, False)])
    assert not unwrapped
    assert record == [("PayloadTooLarge", "body exceeds server.limits.max_body_bytes=1024")]
