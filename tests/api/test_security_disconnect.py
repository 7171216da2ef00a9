"""A client that hangs up while its request waits in the queue: the request is dropped, never computed."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pytest
from api_support import LiveServer, infer_tiny, server_section, tiny_input
from security_support import metric_sum, serve

QUEUE_DELAY_S = 2.0
MODEL = "slow_tiny"


@pytest.fixture(scope="module", params=["hotswap-protocol", "uvicorn-protocol"])
def slow_server(request, registry, model_configs, tmp_path_factory) -> Iterator[LiveServer]:
    """tiny, whose batches wait the full 2 s for company before they run; on hotswap's HTTP protocol
    (the connection signals the loss) and on uvicorn's own (a task watches receive())."""
    model = model_configs["tiny"] | {"name": MODEL, "batching": {
        "max_batch_size": 64, "max_queue_delay_ms": QUEUE_DELAY_S * 1000, "adaptive_delay": False}}
    with serve(registry, server_section(tmp_path_factory), [model],
               hotswap_protocol=request.param == "hotswap-protocol") as live:
        yield live


def wait_for(condition: Callable[[], bool], limit_s: float, what: str) -> float:
    """Poll until `condition()`; returns when it held, fails after `limit_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit_s:
            pytest.fail(f"{what} did not happen within {limit_s} s")
        time.sleep(0.02)
    return time.monotonic()


def send_and_hang_up(live: LiveServer, rows: int) -> tuple[socket.socket, float]:
    """Send a whole inference request on a raw socket and keep it open; returns it and when it was sent."""
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 8],
                                     "data": tiny_input(rows, seed=4).ravel().tolist()}]})
    host, port = live.host_port.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock, time.monotonic()


def test_a_disconnected_request_is_cancelled_and_never_computed(slow_server, tiny, caplog):
    """3 rows queued, then the socket closed: cancelled +1 before the batch runs, and only the 2 rows of a
    later request that shared the batch are ever computed; the request ends as ClientClosed, not as a
    cancelled task that the server would log as an error."""
    def count(name: str, **labels: str) -> float:
        return metric_sum(slow_server.metrics(), name, model=MODEL, **labels)

    before = {name: count(name) for name in ("hotswap_inference_count_total", "hotswap_execution_count_total",
                                             "hotswap_request_success_total")}
    cancelled = count("hotswap_request_failure_total", reason="cancelled")
    sock, sent = send_and_hang_up(slow_server, rows=3)
    wait_for(lambda: count("hotswap_pending_requests") == 1, 1.5, "the request being queued")
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    noticed = wait_for(lambda: count("hotswap_request_failure_total", reason="cancelled") == cancelled + 1,
                       QUEUE_DELAY_S, "the cancellation")
    assert noticed - sent < QUEUE_DELAY_S, "cancelled only once its batch was due"
    assert count("hotswap_pending_requests") == 0

    x = tiny_input(2, seed=8)  # joins the batch the abandoned request was in, if it is still filling
    result = infer_tiny(slow_server.client(), MODEL, x)
    np.testing.assert_allclose(result.as_numpy("y"), tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
    assert count("hotswap_inference_count_total") - before["hotswap_inference_count_total"] == 2
    assert count("hotswap_execution_count_total") - before["hotswap_execution_count_total"] == 1
    assert count("hotswap_request_success_total") - before["hotswap_request_success_total"] == 1
    assert count("hotswap_request_failure_total", reason="cancelled") == cancelled + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_client_gone_mid_upload_is_cancelled_not_an_internal_error(slow_server, caplog):
    """Headers promising 100 bytes, 10 sent, then the socket closed: counted as cancelled, and no
    'unexpected error' traceback is logged for it."""
    def failures(reason: str) -> float:
        return metric_sum(slow_server.metrics(), "hotswap_request_failure_total", model=MODEL, reason=reason)

    cancelled, internal = failures("cancelled"), failures("internal_error")
    host, port = slow_server.host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\":".encode())
        time.sleep(0.2)
    wait_for(lambda: failures("cancelled") == cancelled + 1, 5, "the cancellation")
    assert failures("internal_error") == internal
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
