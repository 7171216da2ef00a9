"""`hotswap serve` without --config serves the default model (examples/default.yaml)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.test_serve_default import free_port, wait_ready


@pytest.mark.slow
def test_serve_without_config_serves_minilm(minilm_source, tmp_path):
    home = minilm_source.base_dir.parents[1]  # the cache the session fixture prepared
    port, log = free_port(), tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSWAP_")} | {"HOTSWAP_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "hotswap.cli", "serve", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        metadata = httpx.get(f"{url}/v2/models/minilm", timeout=10).json()
        assert metadata["backend"]["name"] == "onnxruntime" and metadata["backend"]["device"] == "cpu"
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["The cat sits."]}]}
        result = httpx.post(f"{url}/v2/models/minilm/infer", json=body, timeout=30).json()
        assert result["outputs"][0]["shape"] == [1, 384]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
