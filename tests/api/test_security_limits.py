"""`server.limits` and `server.allowed_hosts`: what one request may cost, checked before it costs it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from api_support import LiveServer, infer_tiny, server_section, tiny_input
from security_support import assert_json_error, raw_exchange, serve, triton_error

LIMITS = {"max_body_bytes": 4096, "max_rows": 8, "max_bytes_element": 64, "body_timeout_s": 1}
INFER = "/v2/models/tiny/infer"


@pytest.fixture(scope="module")
def limited(registry, model_configs, tmp_path_factory) -> Iterator[LiveServer]:
    section = {"model_roots": server_section(tmp_path_factory)["model_roots"], "limits": LIMITS}
    with serve(registry, section, [model_configs["tiny"], model_configs["strings"]]) as live:
        yield live


def port(live: LiveServer) -> int:
    return int(live.host_port.rsplit(":", 1)[1])


def infer_body(rows: int = 1, size: int | None = None) -> bytes:
    """A valid JSON request for tiny, padded with trailing spaces to exactly `size` bytes."""
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 8],
                                     "data": tiny_input(rows).ravel().tolist()}]})
    return body if size is None else body + b" " * (size - len(body))


def head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_content_length_over_the_limit_is_413_before_the_body_is_sent(limited):
    """A 1 GB Content-Length with no body sent gets 413 at once: the server never waits for the upload."""
    response = raw_exchange(port(limited), head(INFER, 10**9))
    assert response.status == 413 and "max_body_bytes=4096" in response.error()
    assert response.elapsed_s < LIMITS["body_timeout_s"], "answered only after waiting for the body"


def test_the_body_limit_is_exact(limited):
    """A body of exactly max_body_bytes is served; one byte more is 413, from Content-Length."""
    url = f"{limited.url}{INFER}"
    ok = httpx.post(url, content=infer_body(size=4096), headers={"Content-Type": "application/json"}, timeout=10)
    assert ok.status_code == 200, ok.text
    too_big = httpx.post(url, content=infer_body(size=4097), timeout=10)
    assert_json_error(too_big, 413, "4097", "server.limits.max_body_bytes=4096")


def test_a_chunked_body_over_the_limit_is_413_while_streaming(limited):
    """Without Content-Length the limit is enforced on the bytes received; a small chunked body is served."""
    url = f"{limited.url}{INFER}"
    response = httpx.post(url, content=iter([b" " * 1024] * 8), timeout=10)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413, "server.limits.max_body_bytes=4096")
    body = infer_body(rows=2)
    ok = httpx.post(url, content=iter([body[:40], body[40:]]), timeout=10)
    assert ok.request.headers["transfer-encoding"] == "chunked"
    assert ok.status_code == 200, ok.text


def test_rows_over_max_rows_are_413(limited, tiny):
    """max_rows rows are served; one row more is 413 naming server.limits.max_rows."""
    client = limited.client()
    x = tiny_input(8, seed=2)
    np.testing.assert_allclose(infer_tiny(client, "tiny", x).as_numpy("y"), tiny.reference({"x": x})["y"],
                               atol=1e-5, rtol=0)
    with triton_error(413, "9 rows", "server.limits.max_rows is 8"):
        infer_tiny(client, "tiny", tiny_input(9))


def test_a_bytes_element_over_max_bytes_element_is_413(limited):
    """A BYTES element of max_bytes_element bytes is echoed; one byte longer is 413, binary or JSON."""
    client = limited.client()

    def echo(elements: list[bytes], binary: bool = True) -> httpclient.InferResult:
        text = httpclient.InferInput("text", [len(elements)], "BYTES")
        text.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
        return client.infer("strings", [text])

    assert echo([b"ok", b"a" * 64]).as_numpy("echo").tolist() == [b"ok", b"a" * 64]
    for binary in (True, False):
        with triton_error(413, "input 'text'", "65 bytes", "server.limits.max_bytes_element=64"):
            echo([b"ok", b"a" * 65], binary)


def test_a_host_header_not_allowed_is_400(limited):
    """Bound to loopback, only loopback names are answered (DNS rebinding); any other Host is 400."""
    url = f"{limited.url}/v2/health/live"
    for host in ("evil.example", f"evil.example:{port(limited)}", "127.0.0.1.evil.example"):
        assert_json_error(httpx.get(url, headers={"Host": host}, timeout=10), 400, "server.allowed_hosts", host)
    for host in (f"127.0.0.1:{port(limited)}", f"localhost:{port(limited)}", "localhost", f"[::1]:{port(limited)}"):
        assert httpx.get(url, headers={"Host": host}, timeout=10).status_code == 200, host


def test_a_stalled_body_is_408_within_body_timeout(limited):
    """Headers promising 100 bytes, then silence: 408 after body_timeout_s (1 s), not a held connection."""
    response = raw_exchange(port(limited), head(INFER, 100), timeout_s=10)
    assert response.status == 408, response
    assert "server.limits.body_timeout_s=1" in response.error()
    assert 0.9 <= response.elapsed_s < 3.0, response.elapsed_s


def test_a_dribbled_body_is_408_within_body_timeout(limited):
    """One byte every 0.25 s keeps each read short, but the whole body is still due within body_timeout_s."""
    response = raw_exchange(port(limited), head(INFER, 100), [b" "] * 40, interval_s=0.25, timeout_s=30)
    assert response.status == 408, response
    assert "server.limits.body_timeout_s=1" in response.error()
    assert response.elapsed_s < 3.0, response.elapsed_s
    assert httpx.get(f"{limited.url}/v2/health/ready", timeout=10).status_code == 200
