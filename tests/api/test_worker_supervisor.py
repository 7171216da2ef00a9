"""`--workers`: the supervisor (hotswap/serve/workers.py) run in the test's own process, as the CLI
runs it, with real spawned workers serving the tiny model on one port: both answer, a killed one is
replaced, SIGTERM drains them to exit 0 and the metrics folder goes; a worker that cannot start
stops the whole run with its status; a port in use is exit 1. tests/workers drives the CLI itself.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from hotswap.config import parse_config
from hotswap.serve.workers import MULTIPROC_ENV, WORKER_HEADER, WorkerSupervisor, bind_reuseport, prepare_metrics_dir

ONE_ROW = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}


def stop_like_a_runtime(supervisor: WorkerSupervisor) -> None:
    """SIGTERM this process, as a container runtime stops the server, but only while the supervisor's
    handler is installed: after a crashed run() the signal would end the test process itself (and
    under `make mutate` a killed worker exits 0, which reads as a passing run)."""
    if getattr(signal.getsignal(signal.SIGTERM), "__self__", None) is supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def supervisor_env(monkeypatch):
    """run() sets these for the workers it spawns: put back afterwards, so that no later test's
    Metrics() takes the multiprocess path."""
    from hotswap.backends.base import CPU_SHARERS_ENV

    monkeypatch.setenv(MULTIPROC_ENV, "")
    monkeypatch.setenv(CPU_SHARERS_ENV, "")


def config(tiny, **server):
    return parse_config({"server": {"port": 0, "workers": 2, "graceful_timeout_s": 20,
                                    "model_roots": [str(Path(tiny.onnx).parent)], **server},
                         "models": [{"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]}]},
                        "test")


def pids_answering(port: int, want: int, exclude: frozenset[str] = frozenset(), timeout_s: float = 120) -> set[str]:
    """Worker pids other than `exclude` seen in answers (each request on a new connection), once `want` did."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen - exclude) < want:
        assert time.monotonic() < deadline, f"only {seen} answered"
        try:
            answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/tiny/infer", timeout=5, json=ONE_ROW)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if answer.status_code == 200:
            seen.add(answer.headers[WORKER_HEADER])
    return seen - exclude


def test_workers_share_the_port_a_dead_one_is_replaced_and_sigterm_drains_them(tiny, supervisor_env):
    supervisor = WorkerSupervisor(config(tiny), None)
    seen: dict[str, object] = {}

    def drive() -> None:
        try:
            while supervisor.port == 0:
                time.sleep(0.05)
            seen["metrics_dir"] = os.environ[MULTIPROC_ENV]
            first = pids_answering(supervisor.port, 2)
            os.kill(int(min(first)), signal.SIGKILL)
            seen["replacement"] = pids_answering(supervisor.port, 1, exclude=frozenset(first))
            seen["first"] = first
        finally:
            stop_like_a_runtime(supervisor)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    handler = signal.getsignal(signal.SIGTERM)
    code = supervisor.run()
    driver.join(10)
    assert code == 0
    assert len(seen["first"]) == 2 and len(seen["replacement"]) == 1  # type: ignore[arg-type]
    assert not Path(str(seen["metrics_dir"])).exists()  # a temporary folder, removed with the run
    assert signal.getsignal(signal.SIGTERM) is handler  # the test process's own handler is back


def test_a_worker_killed_while_it_drains_makes_the_exit_status_1(tiny, supervisor_env):
    supervisor = WorkerSupervisor(config(tiny, workers=1), None)

    def drive() -> None:
        try:
            while supervisor.port == 0:
                time.sleep(0.05)
            (pid,) = pids_answering(supervisor.port, 1)
            held = socket.create_connection(("127.0.0.1", supervisor.port))
            # A request whose body is still coming: the worker's drain waits for it.
            held.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.2)
            stop_like_a_runtime(supervisor)
            time.sleep(0.5)
            os.kill(int(pid), signal.SIGKILL)
            held.close()
        except BaseException:
            stop_like_a_runtime(supervisor)
            raise

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    assert supervisor.run() == 1
    driver.join(10)


def test_a_worker_that_cannot_start_stops_the_run_with_its_status(tiny, supervisor_env, tmp_path):
    # Reachable from other machines without tokens: each worker's app refuses to start (exit 2).
    metrics_dir = tmp_path / "prom"
    supervisor = WorkerSupervisor(config(tiny, host="0.0.0.0"), None, metrics_dir=str(metrics_dir))
    assert supervisor.run() == 2
    assert metrics_dir.is_dir()  # given by the operator: kept


def test_a_port_in_use_is_exit_1_without_starting_workers(tiny, supervisor_env):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        supervisor = WorkerSupervisor(config(tiny, port=taken.getsockname()[1]), None)
        assert supervisor.run() == 1
        assert os.environ[MULTIPROC_ENV] == ""  # failed before the metrics folder was made
    finally:
        taken.close()


def test_the_metrics_folder_keeps_everything_but_earlier_runs_files(tmp_path):
    folder = tmp_path / "prom"
    assert prepare_metrics_dir(str(folder)) == (str(folder), False) and folder.is_dir()
    (folder / "counter_1.db").write_bytes(b"old")
    (folder / "notes.txt").write_text("the operator's")
    assert prepare_metrics_dir(str(folder)) == (str(folder), False)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    made, owned = prepare_metrics_dir(None)
    assert owned and Path(made).is_dir() and Path(made).name.startswith("hotswap-metrics-")
    os.rmdir(made)
    assert prepare_metrics_dir("")[1] is True


def test_reuseport_sockets_share_a_port_and_a_failed_bind_raises():
    first = bind_reuseport("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = bind_reuseport("127.0.0.1", port)
    try:
        assert second.getsockname() == ("127.0.0.1", port) and first.family == socket.AF_INET
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    finally:
        first.close()
        second.close()
    if socket.has_ipv6:
        try:
            six = bind_reuseport("::1", 0)
        except OSError:
            pass  # no IPv6 loopback on this machine
        else:
            assert six.family == socket.AF_INET6
            six.close()
    with pytest.raises(OSError):
        bind_reuseport("192.0.2.1", 0)  # TEST-NET-1: no interface has it
