"""SIGTERM to `hotswap serve` with requests in flight: a drain that finishes, and one that runs out of time.

The model is the tiny ONNX network with batching that waits the full `max_queue_delay_ms` for
company, so requests are provably in flight (hotswap_pending_requests) when the signal arrives.
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_serve_default import free_port, start_server, wait_ready

IN_FLIGHT = 3


def write_config(folder: Path, tiny, graceful_s: float, queue_delay_ms: float) -> Path:
    config = {
        "server": {"graceful_timeout_s": graceful_s, "model_roots": [str(tiny.onnx.parent)]},
        "models": [{"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}],
                    "batching": {"max_batch_size": 64, "max_queue_delay_ms": queue_delay_ms,
                                 "adaptive_delay": False}}],
    }
    path = folder / "shutdown.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pending(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "hotswap_pending_requests")


def serve_and_signal(tmp_path: Path, tiny, graceful_s: float, queue_delay_ms: float):
    """Start the server, put IN_FLIGHT requests in flight, SIGTERM it. Returns (responses, process, log,
    seconds from SIGTERM to the last answer)."""
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_server(write_config(tmp_path, tiny, graceful_s, queue_delay_ms), tmp_path / "home", port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log, limit_s=120)
        x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": x.ravel().tolist()}]}
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v2/models/tiny/infer", json=body, timeout=60)
                       for _ in range(IN_FLIGHT)]
            deadline = time.monotonic() + queue_delay_ms / 1000
            while pending(url) < IN_FLIGHT:
                assert time.monotonic() < deadline, "the requests were not all in flight in time"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            responses = [f.result() for f in futures]
            answered_after = time.monotonic() - signalled
        return responses, x, proc, log, answered_after
    except BaseException:
        proc.kill()
        raise


def exit_status(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"server still running 60 s after SIGTERM:\n{log.read_text()}")


def test_a_drain_that_finishes_answers_everyone_and_exits_0(tmp_path, tiny):
    """Requests queued at SIGTERM (3 s batch delay, 20 s grace) all get 200 with the right rows; exit 0."""
    responses, x, proc, log, _ = serve_and_signal(tmp_path, tiny, graceful_s=20, queue_delay_ms=3000)
    expected = tiny.reference({"x": x})["z"]
    for response in responses:
        assert response.status_code == 200, response.text
        z = next(o for o in response.json()["outputs"] if o["name"] == "z")
        np.testing.assert_allclose(np.array(z["data"], np.float32).reshape(2, 1), expected, atol=1e-5, rtol=0)
    assert exit_status(proc, log) == 0, log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_requests_left_at_the_deadline_get_503_json_and_the_process_exits_0(tmp_path, tiny):
    """Requests that would wait 10 s get, at the 2 s grace deadline, 503 JSON with Retry-After, not a
    plain-text 500 or a dropped connection; the process still exits 0."""
    responses, _, proc, log, answered_after = serve_and_signal(tmp_path, tiny, graceful_s=2, queue_delay_ms=10_000)
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["retry-after"].isdigit()
        assert "shutting down" in response.json()["error"]
    assert answered_after < 2.0 + 1.0, f"answered {answered_after:.1f} s after SIGTERM"
    assert exit_status(proc, log) == 0, log.read_text()
