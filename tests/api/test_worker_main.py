"""worker_main (serve/workers.py), the body of each `--workers` process, run in a thread of the test
process so that its code is seen by coverage and `make mutate` (a spawned worker's is not): it serves
on its SO_REUSEPORT socket with its pid in every answer, sets `ready` once it listens, drains on
"stop" or when the supervisor's end of the pipe closes, stops at once on "force", and exits 2 on a
config error and with uvicorn's status 3 when the app does not start.
tests/api/test_worker_supervisor.py runs it as real spawned processes under the supervisor.

`os.setpgrp` is replaced here: in a worker it leaves the terminal's process group, which the test
process itself must not do.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

from hotswap.config import parse_config
from hotswap.serve.workers import WORKER_HEADER, bind_reuseport, worker_main

ONE_ROW = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}


@dataclass
class Worker:
    port: int
    ready: threading.Event
    stop: Connection  # the supervisor's end of the pipe
    thread: threading.Thread
    exit: list = field(default_factory=list)  # SystemExit codes, or "returned"

    def listening(self, timeout_s: float = 60) -> bool:
        """Whether it became ready; False as soon as it ended without (not after the whole wait)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.05):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                return self.ready.is_set()
        return True


@pytest.fixture(autouse=True)
def process_group(monkeypatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(os, "setpgrp", lambda: calls.append("setpgrp"))
    return calls


@pytest.fixture
def reserved() -> Iterator[int]:
    """A port reserved as the supervisor reserves it (bound with SO_REUSEPORT, not listening)."""
    holder = bind_reuseport("127.0.0.1", 0)
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def config(tiny, source=None, **server):
    return parse_config({"server": {"graceful_timeout_s": 20, "model_roots": [str(Path(tiny.onnx).parent)], **server},
                         "models": [{"name": "tiny", "source": str(source or tiny.onnx),
                                     "backends": [{"name": "onnxruntime"}]}]}, "test")


def start(settings, port: int, config_dir: Path | None = None) -> Worker:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    ready = threading.Event()
    worker = Worker(port, ready, sender, threading.Thread())

    def body() -> None:
        try:
            worker_main(settings, config_dir, port, receiver, ready)
            worker.exit.append("returned")
        except SystemExit as exc:
            worker.exit.append(exc.code)

    worker.thread = threading.Thread(target=body, daemon=True, name="worker-main")
    worker.thread.start()
    return worker


def infer(port: int) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v2/models/tiny/infer", json=ONE_ROW, timeout=30)


def test_a_worker_answers_with_its_pid_and_drains_on_stop(tiny, reserved, process_group):
    worker = start(config(tiny), reserved)
    assert worker.listening(), "the worker never listened"
    answer = infer(reserved)
    assert answer.status_code == 200 and answer.headers[WORKER_HEADER] == str(os.getpid())
    assert process_group == ["setpgrp"]
    worker.stop.send("stop")
    worker.thread.join(30)
    assert not worker.thread.is_alive() and worker.exit == ["returned"]
    with pytest.raises(httpx.ConnectError):
        infer(reserved)


def test_two_workers_share_the_port_and_follow_the_pipe_on_a_daemon_thread(tiny, reserved):
    """Each listens on its own SO_REUSEPORT socket (a second plain bind would fail), and the thread reading
    the supervisor's pipe must not keep a drained worker's process alive."""
    workers = [start(config(tiny), reserved) for _ in range(2)]
    try:
        assert all(w.listening() for w in workers), "a second worker could not listen on the shared port"
        followers = [t for t in threading.enumerate() if t.name == "supervisor-pipe"]
        assert len(followers) == 2 and all(t.daemon for t in followers)
        assert infer(reserved).status_code == 200
    finally:
        for worker in workers:
            worker.stop.send("stop")
        for worker in workers:
            worker.thread.join(30)
    assert [w.exit for w in workers] == [["returned"], ["returned"]]


def test_a_relative_source_is_read_from_the_config_folder(tiny, reserved):
    worker = start(config(tiny, source=Path(tiny.onnx).name), reserved, config_dir=Path(tiny.onnx).parent)
    try:
        assert worker.listening() and infer(reserved).status_code == 200
    finally:
        worker.stop.send("stop")
        worker.thread.join(30)
    assert worker.exit == ["returned"]


def test_a_worker_whose_supervisor_is_gone_drains(tiny, reserved):
    worker = start(config(tiny), reserved)
    assert worker.listening()
    worker.stop.close()  # the supervisor died: its end of the pipe closed
    worker.thread.join(30)
    assert not worker.thread.is_alive() and worker.exit == ["returned"]


def test_force_ends_a_drain_that_waits_for_a_request(tiny, reserved):
    worker = start(config(tiny), reserved)
    assert worker.listening()
    held = socket.create_connection(("127.0.0.1", reserved))
    try:  # a request whose body is still coming: a drain waits for it, up to graceful_timeout_s (20 s)
        held.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        worker.stop.send("stop")
        worker.thread.join(1.0)
        assert worker.thread.is_alive(), "the drain should wait for the request still being sent"
        worker.stop.send("force")
        worker.thread.join(10)
        assert not worker.thread.is_alive() and worker.exit == ["returned"]
    finally:
        held.close()


def test_a_config_error_is_exit_2_before_anything_listens(tiny, reserved):
    # Reachable from other machines without tokens: create_app refuses.
    worker = start(config(tiny, host="0.0.0.0"), reserved)
    worker.thread.join(30)
    assert worker.exit == [2] and not worker.ready.is_set()


def test_a_model_that_does_not_load_is_uvicorns_startup_failure(tiny, reserved):
    broken = Path(tiny.onnx).parent / "broken-worker-main.onnx"
    broken.write_bytes(b"not an onnx file")
    try:
        worker = start(config(tiny, source=broken), reserved)
        worker.thread.join(60)
    finally:
        broken.unlink()
    assert worker.exit == [STARTUP_FAILURE] and not worker.ready.is_set()
