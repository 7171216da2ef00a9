"""The KServe runtime's container, run here: `hotswap serve` with no config file, only the
runtime's HOTSWAP_* environment, serving a model folder (the role of /mnt/models)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from .kube_schema import load

REPO = Path(__file__).resolve().parents[2]
RUNTIME = load(REPO / "deploy" / "kserve" / "cluster-serving-runtime.yaml")[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def kserve_container(tiny, tmp_path_factory):
    """The runtime container's args and env, with /mnt/models -> a folder holding tiny.onnx and
    tiny.pt2, the ISVC name -> 'tiny', and the pod address -> a free loopback port."""
    models = tmp_path_factory.mktemp("mnt-models")
    for artifact in (tiny.onnx, tiny.exported):
        (models / artifact.name).write_bytes(artifact.read_bytes())
    port = free_port()
    container = RUNTIME["spec"]["containers"][0]
    assert "command" not in container  # the image's ENTRYPOINT, `hotswap` (or the Ascend wrapper), runs the args
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSWAP_")}
    for item in container["env"]:
        value = item["value"].replace("{{.Name}}", "tiny").replace("/mnt/models", str(models))
        env[item["name"]] = value
    assert env.pop("HOTSWAP_SERVER__HOST") == "0.0.0.0"
    env |= {"HOTSWAP_SERVER__HOST": "127.0.0.1", "HOTSWAP_SERVER__PORT": str(port),
            "HOTSWAP_HOME": str(tmp_path_factory.mktemp("home"))}
    log = tmp_path_factory.mktemp("log") / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "hotswap.cli", *container["args"]], env=env,
                            cwd=tmp_path_factory.mktemp("cwd"), stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    ready = container["readinessProbe"]["httpGet"]["path"]
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"hotswap serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready within 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url, container
    finally:
        proc.terminate()
        proc.wait(30)


def test_probes_answer_on_the_runtime_paths(kserve_container):
    url, container = kserve_container
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert httpx.get(url + container[probe]["httpGet"]["path"], timeout=5).status_code == 200


def test_model_from_the_folder_is_served_by_env_config_alone(kserve_container, tiny):
    url, _ = kserve_container
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    metadata = client.get_model_metadata("tiny")
    assert metadata["backend"]["name"] == "onnxruntime"  # the runtime's first chain entry
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    inp = triton.InferInput("x", [5, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tiny", [inp])
    expected = tiny.reference({"x": x})
    np.testing.assert_allclose(result.as_numpy("y"), expected["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("z"), expected["z"], rtol=1e-5, atol=1e-4)
    assert 'model="tiny"' in httpx.get(url + "/metrics", timeout=5).text
