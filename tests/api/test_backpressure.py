"""Deadlines and a full queue over real HTTP, with requests that really wait in a real queue.

Every model here batches with a 1.5 s fill window and no adaptive delay: a lone request
sits in its filling batch for 1.5 s, so a deadline well under that expires and one well
over it does not. Orderings (who is queued when) are awaited through the runner's state,
never assumed from timing.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from api_support import LiveServer, infer_tiny, tiny_input

WINDOW_MS = 1500
SLOW = {"max_batch_size": 64, "max_queue_delay_ms": WINDOW_MS, "adaptive_delay": False}


@pytest.fixture(scope="module")
def bp_server(server_factory, tiny) -> LiveServer:
    def model(name: str, **batching) -> dict:
        return {"name": name, "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}],
                "batching": SLOW | batching}

    return server_factory([model("slow"), model("deadline", timeout_ms=200),
                           model("small_queue", max_batch_size=4, max_queue_size=2), model("spare")])


def _labels(model: str, **extra: str) -> frozenset:
    return frozenset(({"model": model, "version": "1", "backend": "onnxruntime", "device": "cpu"} | extra).items())


def _failures(server: LiveServer, model: str, reason: str) -> float:
    return server.metrics().get(("hotswap_request_failure_total", _labels(model, reason=reason)), 0.0)


def _infer_json(server: LiveServer, model: str, x: np.ndarray, parameters: dict | None = None) -> httpx.Response:
    body: dict = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    if parameters is not None:
        body["parameters"] = parameters
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)


def test_request_timeout_is_in_microseconds(bp_server, tiny):
    """parameters.timeout is µs (Triton's unit): 200 000 µs = 0.2 s expires inside the 1.5 s window
    (504, counted as reason=timeout); 5 000 000 µs = 5 s outlasts it and the request is answered."""
    before = _failures(bp_server, "slow", "timeout")
    r = _infer_json(bp_server, "slow", tiny_input(1), {"timeout": 200_000})
    assert r.status_code == 504, r.text
    assert r.json() == {"error": "request timed out after 200 ms in the queue (timeout)"}
    assert _failures(bp_server, "slow", "timeout") == before + 1

    client = bp_server.client()
    try:
        x = tiny_input(2, seed=3)
        result = infer_tiny(client, "slow", x, timeout=5_000_000)  # tritonclient sends parameters.timeout
        np.testing.assert_allclose(result.as_numpy("y"), tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
    finally:
        client.close()
    assert _failures(bp_server, "slow", "timeout") == before + 1


def test_config_default_timeout_applies(bp_server):
    """batching.timeout_ms (200) is the deadline of a request that sets none: 504 and reason=timeout."""
    before = _failures(bp_server, "deadline", "timeout")
    r = _infer_json(bp_server, "deadline", tiny_input(1))
    assert r.status_code == 504, r.text
    assert r.json() == {"error": "request timed out after 200 ms in the queue (timeout)"}
    assert _failures(bp_server, "deadline", "timeout") == before + 1


class Sender(threading.Thread):
    """One tritonclient request in its own thread; keeps the answer or the error."""

    def __init__(self, server: LiveServer, x: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.server, self.x = server, x
        self.result: np.ndarray | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        client = self.server.client()
        try:
            self.result = infer_tiny(client, "small_queue", self.x).as_numpy("y")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            client.close()


def _wait(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_full_queue_is_503_with_retry_after_and_counted_as_queue_full(bp_server, tiny):
    """A (1 row) holds the worker in its 1.5 s fill window; B and C (4 rows each) do not fit beside it
    and fill the queue (max_queue_size 2); D is refused at once: 503, Retry-After, an error naming
    batching.max_queue_size, and one failure labelled reason="queue_full". A, B and C still get their rows."""
    runner = bp_server.app.state.dataplane.repository.ready_runner("small_queue")
    pending = ("hotswap_pending_requests", _labels("small_queue"))
    before = {reason: _failures(bp_server, "small_queue", reason) for reason in ("queue_full", "backend_error")}
    senders = [Sender(bp_server, tiny_input(rows, seed=20 + i)) for i, rows in enumerate((1, 4, 4))]
    senders[0].start()
    _wait(lambda: bp_server.metrics().get(pending) == 1 and runner._batcher.queued == 0, "A is in a filling batch")
    for sender in senders[1:]:
        sender.start()
    _wait(lambda: runner._batcher.queued == 2, "B and C are queued")

    r = _infer_json(bp_server, "small_queue", tiny_input(4, seed=30))
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json() == {"error": "queue full: 2 requests waiting (batching.max_queue_size=2)"}
    for sender in senders:
        sender.join(30)
    for sender in senders:
        assert sender.error is None, sender.error
        np.testing.assert_allclose(sender.result, tiny.reference({"x": sender.x})["y"], atol=1e-5, rtol=0)
    assert _failures(bp_server, "small_queue", "queue_full") == before["queue_full"] + 1
    assert _failures(bp_server, "small_queue", "backend_error") == before["backend_error"]


def test_model_not_loaded_is_503_with_retry_after(bp_server):
    """An unloaded model answers 503 with Retry-After and says it is not ready, and why."""
    client = bp_server.client()
    client.unload_model("spare")
    try:
        r = _infer_json(bp_server, "spare", tiny_input(1))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert set(r.json()) == {"error"}
        assert error.startswith("model 'spare' is not ready (state ") and error.endswith("UNAVAILABLE): unloaded")
        with pytest.raises(httpclient.InferenceServerException) as info:
            infer_tiny(client, "spare", tiny_input(1))
        assert info.value.status() == "503"
    finally:
        client.load_model("spare")
        client.close()
