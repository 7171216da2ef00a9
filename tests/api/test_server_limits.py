"""The HTTP server itself, as `hotswap serve` builds it (HotswapServer + uvicorn_config):
silent and slowly dripping clients are cut off, and connections are bounded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from api_support import free_port, server_section

from hotswap.config import parse_config
from hotswap.serve.app import create_app
from hotswap.serve.server import HotswapServer, uvicorn_config

HEADER_TIMEOUT_S = 1.0


@contextmanager
def hotswap_server(registry, tiny, tmp_path_factory, limits: dict) -> Iterator[int]:
    port = free_port()
    server_cfg = {**server_section(tmp_path_factory), "port": port, "log_level": "warning", "limits": limits}
    config = parse_config({"server": server_cfg, "models": [
        {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]}]}, "test", registry)
    app = create_app(config, registry)
    server = HotswapServer(uvicorn_config(app, config.server), app.state.dataplane)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def port(registry, tiny, tmp_path_factory) -> Iterator[int]:
    with hotswap_server(registry, tiny, tmp_path_factory, {"header_timeout_s": HEADER_TIMEOUT_S}) as p:
        yield p


def closed_after(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closed `sock` (None if it was still open after `limit_s`)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - started


def drip_headers(sock: socket.socket, interval_s: float) -> None:
    """Send request headers a byte every `interval_s`, never finishing them, until the server closes
    the connection or well past the header deadline."""
    started = time.monotonic()
    for byte in b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ":
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        if time.monotonic() - started > HEADER_TIMEOUT_S + 4:
            return
        time.sleep(interval_s)


def test_a_silent_connection_is_closed(port):
    """A client that connects and sends nothing holds no connection past header_timeout_s."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        waited = closed_after(sock, HEADER_TIMEOUT_S + 4)
    assert waited is not None, "the silent connection was still open"
    assert waited >= HEADER_TIMEOUT_S * 0.8


def test_dripping_headers_are_cut_off(port):
    """Headers sent a byte at a time, never finished: closed at the header deadline, not held open."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        drip_headers(sock, 0.1)
        waited = closed_after(sock, 3)
    assert waited is not None, "the dripping connection was still open"
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_requests_on_a_kept_alive_connection_still_work(port):
    """The header deadline is per request: a kept-alive client with quick requests is never cut."""
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}]}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(3):
            assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 0.6)  # idle between requests, under keep_alive_s


def test_the_second_request_on_a_connection_gets_a_header_deadline_of_its_own(port):
    """After a quick first request and an idle spell, a second request whose headers drip is cut off
    header_timeout_s after it began: not at the connection's first deadline, and not never."""
    first = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 82\r\n\r\n"
             b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}')
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(first)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "the first request was answered"
        time.sleep(HEADER_TIMEOUT_S * 0.6)  # idle past part of the connection's first deadline
        began = time.monotonic()
        drip_headers(sock, 0.05)
        waited = closed_after(sock, 3)
        cut_after = time.monotonic() - began
    assert waited is not None, "the second request's dripping headers were never cut off"
    assert HEADER_TIMEOUT_S * 0.8 <= cut_after < HEADER_TIMEOUT_S + 4, cut_after


def test_connections_over_max_concurrency_get_503(registry, tiny, tmp_path_factory):
    """limits.max_concurrency bounds open connections: one more is answered 503, not queued forever."""
    with hotswap_server(registry, tiny, tmp_path_factory, {"max_concurrency": 2}) as p:
        held = [socket.create_connection(("127.0.0.1", p)) for _ in range(2)]
        try:
            time.sleep(0.2)
            response = httpx.get(f"http://127.0.0.1:{p}/v2/health/live", timeout=10)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"error": "the server is at its concurrency limit (server.limits."
                                                "max_concurrency=2 connections and requests at once); retry"}
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{p}/v2/health/live", timeout=10).status_code == 200


INFER = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         b"Content-Length: 82\r\n\r\n"
         b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}')


def answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole response from `sock`: (status line and headers, body), read by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head, body


@pytest.fixture(scope="module")
def short_keep_alive(registry, tiny, tmp_path_factory) -> Iterator[int]:
    with hotswap_server(registry, tiny, tmp_path_factory, {"keep_alive_s": 0.5, "header_timeout_s": 5}) as p:
        yield p


def test_an_idle_connection_closes_keep_alive_s_after_its_last_answer(short_keep_alive):
    """keep_alive_s counts from the last answer, and is not stretched to the header deadline (5 s)."""
    with socket.create_connection(("127.0.0.1", short_keep_alive)) as sock:
        for _ in range(3):  # each answer gives the connection another keep_alive_s
            sock.sendall(INFER)
            head, body = answer(sock)
            assert head.startswith(b"HTTP/1.1 200") and b'"outputs"' in body
            time.sleep(0.3)
        waited = closed_after(sock, 4)
    assert waited is not None, "the idle connection was still open after 4 s"
    assert 0.1 <= waited < 2.0, waited


def test_the_infer_answer_is_one_http_response_with_uvicorns_headers(port):
    """A 200, a 404 and a HEAD's 405 on one kept-alive connection: each answer whole, with the date
    and server headers and an exact Content-Length; the HEAD's without its body."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(INFER)
        head, body = answer(sock)
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"http/1.1 200 ok"
        assert {b"server: uvicorn", b"content-type: application/json", b"content-length: %d" % len(body)} <= set(lines)
        assert any(line.startswith(b"date: ") for line in lines) and b'"model_name":"tiny"' in body
        sock.sendall(INFER.replace(b"/tiny/", b"/nope/"))
        head, body = answer(sock)
        assert head.startswith(b"HTTP/1.1 404 Not Found") and b"nope" in body
        sock.sendall(b"HEAD /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 405 Method Not Allowed") and head.endswith(b"\r\n\r\n")
        assert b"allow: POST" in head and b"content-length: 0" not in head.lower()
        sock.sendall(INFER)  # the HEAD left no stray body bytes on the connection
        assert answer(sock)[0].startswith(b"HTTP/1.1 200")


def test_pipelined_requests_are_each_answered_whole_and_in_order(port):
    """Three requests in one write, the second for a model that does not exist: three answers, in order."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(INFER + INFER.replace(b"/tiny/", b"/nope/") + INFER)
        reader = sock.makefile("rb")
        statuses = []
        for _ in range(3):
            status = reader.readline()
            headers = dict(line.rstrip(b"\r\n").lower().split(b": ", 1) for line in iter(reader.readline, b"\r\n"))
            body = reader.read(int(headers[b"content-length"]))
            statuses.append((status.split(b" ")[1], b"nope" in body, b'"outputs"' in body))
    assert statuses == [(b"200", False, True), (b"404", True, False), (b"200", False, True)]
