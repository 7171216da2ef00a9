"""`hotswap ray` as a subprocess on its own local Ray: it serves until SIGTERM and then exits 0;
a replica that no node can place fails the command after `ray.start_timeout_s`, naming why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml

from hotswap.deploy.ray import REPLICA_HEADER

from .test_kserve_env import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def write_config(folder: Path, tiny, ray: dict) -> tuple[Path, int]:
    shutil.copyfile(tiny.onnx, folder / "tiny.onnx")
    port = free_port()
    config = {"server": {"port": port}, "ray": ray,
              "models": [{"name": "tiny", "source": "tiny.onnx", "backends": [{"name": "onnxruntime"}]}]}
    path = folder / "hotswap.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def hotswap_ray(config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTSWAP_", "RAY_"))}
    return subprocess.Popen([sys.executable, "-m", "hotswap.cli", "ray", "--config", str(config), "--num-cpus", "1"],
                            env=env, cwd=config.parent, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_serves_until_sigterm(tiny, tmp_path):
    config, port = write_config(tmp_path, tiny, {"ray_actor_options": {"num_cpus": 0.5}, "start_timeout_s": 120})
    log = tmp_path / "ray.log"
    proc = hotswap_ray(config, log)
    try:
        deadline = time.monotonic() + 150
        while "serving on Ray Serve" not in log.read_text():
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        response = httpx.get(f"http://127.0.0.1:{port}/v2/models/tiny", timeout=30)
        assert response.status_code == 200 and response.headers[REPLICA_HEADER]
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.ones((2, 8), dtype=np.float32)
        inp = triton.InferInput("x", [2, 8], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("tiny", [inp]).as_numpy("y"), tiny.reference({"x": x})["y"],
                                   atol=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_unplaceable_replica_times_out_with_the_reason(tiny, tmp_path):
    config, _ = write_config(tmp_path, tiny, {"ray_actor_options": {"num_cpus": 64}, "start_timeout_s": 10})
    log = tmp_path / "ray.log"
    proc = hotswap_ray(config, log)
    try:
        assert proc.wait(120) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = " ".join(log.read_text().split())  # the console wraps long lines
    assert "not ready after 10s" in text and "'num_cpus': 64.0" in text and "'CPU': 1.0" in text, text
