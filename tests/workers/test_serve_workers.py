"""`hotswap serve --workers 2` as a subprocess on a real port, driven by real clients.

Requests must reach both workers (the `x-hotswap-worker` header names the pid that answered),
and /metrics, whichever worker answers the scrape, must count every request of both.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as triton

from tests.e2e.test_serve_default import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": [0.5] * 16}]}).encode()


def write_config(tmp: Path, onnx: Path, extra: str = "") -> Path:
    path = tmp / "workers.yaml"
    path.write_text(f"server: {{log_level: warning, model_roots: [{onnx.parent}]{extra}}}\n"
                    f"models:\n  - name: tiny\n    source: {onnx}\n"
                    f"    backends: [{{name: onnxruntime, providers: [CPUExecutionProvider]}}]\n")
    return path


def start(config: Path, port: int, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hotswap.cli", "serve", "--config", str(config), "--port",
                             str(port), *args], cwd=REPO, env=env or dict(os.environ),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def worker_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The supervisor's live worker children (not multiprocessing's resource tracker)."""
    workers = []
    for child in psutil.Process(proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:  # exited meanwhile (a zombie until the supervisor reaps it)
            pass
    return workers


def post_infer(port: int) -> tuple[int, str]:
    """One request on a new connection (so the kernel picks a worker for it): status, answering pid."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v2/models/tiny/infer", BODY, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-hotswap-worker", "")
    finally:
        conn.close()


def scrape(port: int) -> tuple[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.read().decode(), response.getheader("x-hotswap-worker", "")
    finally:
        conn.close()


def total(text: str, family: str, **labels: str) -> float:
    """Sum of a family's samples whose labels include `labels`."""
    value = 0.0
    for match in re.finditer(rf"^{family}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            value += float(match.group(2))
    return value


@pytest.fixture(scope="module")
def two_workers(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    metrics_dir = tmp / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # an earlier run's file: must be wiped
    port, log = free_port(), tmp / "serve.log"
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    proc = start(write_config(tmp, tiny.onnx), port, log, "--workers", "2", env=env)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 120
        while len(worker_processes(proc)) < 2 or not _both_ready(port):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield proc, port, log, metrics_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _both_ready(port: int) -> bool:
    text, _ = scrape(port)
    return total(text, "hotswap_workers") == 2


def test_requests_reach_both_workers_and_metrics_count_all_of_them(two_workers):
    proc, port, _, metrics_dir = two_workers
    workers = {str(child.pid) for child in worker_processes(proc)}
    assert len(workers) == 2
    assert not (metrics_dir / "counter_999999.db").exists()
    answered: dict[str, int] = {}
    for _ in range(60):
        status, pid = post_infer(port)
        assert status == 200
        answered[pid] = answered.get(pid, 0) + 1
    assert set(answered) == workers, answered
    # And through tritonclient (binary tensors, kept-alive connections), each client a connection.
    for _ in range(10):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = triton.InferInput("x", [3, 8], "FP32")
        x.set_data_from_numpy(np.ones((3, 8), dtype=np.float32))
        assert client.infer("tiny", [x]).as_numpy("y").shape[0] == 3
        client.close()
    scraped_by: set[str] = set()
    for _ in range(40):  # several scrapes, until both workers have answered at least one
        text, pid = scrape(port)
        scraped_by.add(pid)
        assert total(text, "hotswap_request_success_total", model="tiny") == 70, text
        assert total(text, "hotswap_inference_count_total", model="tiny") == 60 * 2 + 10 * 3
        assert total(text, "hotswap_request_duration_seconds_count", model="tiny") == 70
        assert total(text, "hotswap_pending_requests", model="tiny") == 0
        assert total(text, "hotswap_backend_selected", model="tiny", position="0") == 1
        assert total(text, "hotswap_workers") == 2
        if scraped_by == workers:
            break
    assert scraped_by == workers


def test_a_dead_worker_is_replaced_and_its_counts_stay(two_workers):
    proc, port, log, _ = two_workers
    before, _ = scrape(port)
    served = total(before, "hotswap_request_success_total", model="tiny")
    victim = worker_processes(proc)[0]
    victim.kill()
    deadline = time.monotonic() + 120
    while True:
        children = worker_processes(proc)
        if len(children) == 2 and victim.pid not in {c.pid for c in children} and _both_ready(port):
            break
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert post_infer(port)[0] == 200
    after, _ = scrape(port)
    assert total(after, "hotswap_request_success_total", model="tiny") == served + 1
    assert total(after, "hotswap_workers") == 2  # the dead worker's live gauge is gone
    assert "starting another" in log.read_text()


def test_sigterm_drains_every_worker_and_exits_0(tiny, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    proc = start(write_config(tmp_path, tiny.onnx), port, log, "--workers", "2")
    wait_ready(proc, f"http://127.0.0.1:{port}", log)
    workers = worker_processes(proc)
    statuses: list[int] = []
    errors: list[str] = []
    stop, signalled = threading.Event(), threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            before = not signalled.is_set()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                try:
                    conn.request("POST", "/v2/models/tiny/infer", BODY, {"Content-Type": "application/json"})
                except ConnectionError:  # refused or reset while sending (a connection still in the kernel's
                    return  # backlog when the listener closed): never received, so safe to retry elsewhere
                try:
                    response = conn.getresponse()
                    response.read()
                    statuses.append(response.status)
                except ConnectionError as exc:  # sent, then no answer: lost, unless sent after SIGTERM
                    if before:
                        errors.append(repr(exc))
                    return
            finally:
                conn.close()

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    signalled.set()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses and set(statuses) == {200} and not errors, (set(statuses), errors)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


@pytest.mark.parametrize("where", ["config", "flag"])
def test_workers_refuse_model_control_explicit(tiny, tmp_path, where):
    extra = ", model_control: explicit" + (", workers: 2" if where == "config" else "")
    args = ["--workers", "2"] if where == "flag" else []
    proc = start(write_config(tmp_path, tiny.onnx, extra), free_port(), tmp_path / "serve.log", *args)
    assert proc.wait(timeout=120) == 2
    text = " ".join((tmp_path / "serve.log").read_text().split())  # rich wraps long lines
    assert "model_control: explicit needs workers: 1 (got workers: 2)" in text
