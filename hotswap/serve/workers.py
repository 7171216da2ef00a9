"""`hotswap serve --workers N`: N server processes on one port, one /metrics for all of them.

The parent (`WorkerSupervisor`) serves nothing. It makes the Prometheus multiprocess directory
(PROMETHEUS_MULTIPROC_DIR, wiped at start; a temporary one unless set), reserves the port, and
starts N workers with the spawn method, so each imports prometheus_client with that variable
already set and records its values in the directory's files. Each worker builds its own app
(its own copy of every model) and listens on its own socket bound with SO_REUSEPORT to the same
address: the kernel spreads new connections over the workers, where one shared socket would let
whichever worker wakes first take a whole burst. Every response of a worker carries its pid in
the `x-hotswap-worker` header.

Signals go to the parent only (workers run in their own process group, so a terminal's Ctrl-C
does not reach them twice). On SIGTERM or SIGINT the parent tells each worker through a pipe to
drain, as a single server does on SIGTERM, and exits 0 when all of them did; a second signal
makes them stop at once. A worker whose parent dies sees the pipe close and drains too. A worker
that dies after it was ready is replaced (its live-only gauges are removed with
`mark_process_dead`); one that dies before, e.g. because a model does not load, stops them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

from hotswap.backends.base import CPU_SHARERS_ENV
from hotswap.config import HotswapConfig

log = logging.getLogger("hotswap.workers")

#: prometheus_client's switch to multiprocess mode, read once when it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Response header naming the pid of the worker that answered.
WORKER_HEADER = "x-hotswap-worker"
#: Seconds past `server.graceful_timeout_s` after which workers still running are killed.
KILL_MARGIN_S = 15.0


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def prepare_metrics_dir(path: str | None) -> tuple[str, bool]:
    """The multiprocess directory, emptied of earlier runs' files; True when it is ours to remove."""
    if not path:
        return tempfile.mkdtemp(prefix="hotswap-metrics-"), True
    os.makedirs(path, exist_ok=True)
    for stale in Path(path).glob("*.db"):  # only prometheus_client's files: the folder may be shared
        stale.unlink()
    return path, False


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing's SpawnProcess
    stop: Connection
    ready: Any  # multiprocessing.Event


class WorkerSupervisor:
    """Starts `config.server.workers` workers on one port and watches them until they exit."""

    def __init__(self, config: HotswapConfig, config_dir: Path | None, metrics_dir: str | None = None) -> None:
        self.config = config
        self.config_dir = config_dir
        self.metrics_dir = metrics_dir
        self.port = config.server.port
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._signals = 0
        self._deadline: float | None = None
        self._failed: int | None = None
        self._codes: list[int] = []

    def run(self) -> int:
        """Serve until stopped; the exit status (0 after a drain on SIGTERM)."""
        try:
            reserved = bind_reuseport(self.config.server.host, self.config.server.port)
        except OSError as exc:
            log.error("cannot bind %s:%d: %s", self.config.server.host, self.config.server.port, exc.strerror)
            return 1
        path, owned = prepare_metrics_dir(self.metrics_dir)
        os.environ[MULTIPROC_ENV] = path  # inherited by the spawned workers
        # Each worker sizes its CPU thread pools for its share of the cores, not for all of them.
        os.environ[CPU_SHARERS_ENV] = str(self.config.server.workers)
        self.port = reserved.getsockname()[1]  # port 0: the workers all take the one given here
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.config.server.workers):
                self._start(index)
            self._supervise(path)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self._workers.values():
                worker.process.kill()
                worker.process.join()
            reserved.close()
            if owned:
                shutil.rmtree(path, ignore_errors=True)
        if self._failed is not None:
            return self._failed
        return 0 if all(code == 0 for code in self._codes) else 1

    def _start(self, index: int) -> None:
        receiver, sender = self._ctx.Pipe(duplex=False)
        ready = self._ctx.Event()
        process = self._ctx.Process(target=worker_main, name=f"hotswap-worker-{index}",
                                    args=(self.config, self.config_dir, self.port, receiver, ready))
        process.start()
        receiver.close()  # the worker holds its own copy: when ours goes too, it sees EOF
        self._workers[index] = _Worker(index, process, sender, ready)
        if self._signals:  # stopped while the workers were being started
            sender.send("stop")

    def _supervise(self, path: str) -> None:
        from prometheus_client import multiprocess

        announced = False
        while self._workers:
            by_sentinel = {w.process.sentinel: w for w in self._workers.values()}
            for sentinel in wait(list(by_sentinel), timeout=0.2):
                worker = by_sentinel[sentinel]
                worker.process.join()
                code, pid = worker.process.exitcode, worker.process.pid
                del self._workers[worker.index]
                multiprocess.mark_process_dead(pid, path)
                self._exited(worker, code)
            if not announced and self._workers and all(w.ready.is_set() for w in self._workers.values()):
                announced = True
                log.info("%d workers ready on http://%s:%d (pids %s)", len(self._workers), self.config.server.host,
                         self.port, ", ".join(str(w.process.pid) for w in self._workers.values()))
            if self._deadline is not None and time.monotonic() > self._deadline:
                log.error("workers still running %.0f s after the drain began: killing them", KILL_MARGIN_S)
                for worker in self._workers.values():
                    worker.process.kill()
                self._deadline = None

    def _exited(self, worker: _Worker, code: int | None) -> None:
        code = 1 if code is None else code
        if self._signals or self._failed is not None:
            log.info("worker %d (pid %s) exited with %d", worker.index, worker.process.pid, code)
            self._codes.append(code)
        elif not worker.ready.is_set():
            log.error("worker %d (pid %s) exited with %d before it was ready: stopping", worker.index,
                      worker.process.pid, code)
            self._failed = code or 1
            self._tell_all("stop")
        else:
            log.warning("worker %d (pid %s) exited with %d; starting another", worker.index, worker.process.pid,
                        code)
            self._start(worker.index)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: draining %d workers", signal.Signals(sig).name, len(self._workers))
            self._deadline = time.monotonic() + self.config.server.graceful_timeout_s + KILL_MARGIN_S
        self._tell_all("stop" if self._signals == 1 else "force")

    def _tell_all(self, message: str) -> None:
        for worker in self._workers.values():
            try:
                worker.stop.send(message)
            except OSError:  # it is exiting already
                pass


def worker_main(config: HotswapConfig, config_dir: Path | None, port: int, stop: Connection, ready: Any) -> None:
    """One worker process: the app on a SO_REUSEPORT socket, until the supervisor says stop."""
    os.setpgrp()  # the supervisor alone receives terminal signals and relays them (module docstring)
    from rich.logging import RichHandler

    logging.basicConfig(level=config.server.log_level.upper(), format="[worker %(process)d] %(message)s",
                        datefmt="[%X]", handlers=[RichHandler(show_path=False)])
    from hotswap.backends.registry import discover_backends
    from hotswap.errors import HotswapError
    from hotswap.serve.app import create_app
    from hotswap.serve.server import HotswapServer, uvicorn_config

    try:
        application = create_app(config, discover_backends(), config_dir=config_dir)
    except HotswapError as exc:
        log.error("config error: %s", exc)
        sys.exit(2)

    class Server(HotswapServer):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening now
                gauge = application.state.dataplane.metrics.serving_workers
                if gauge is not None:
                    gauge.set(1)
                ready.set()

    settings = uvicorn_config(application, config.server, port=port, headers=[(WORKER_HEADER, str(os.getpid()))])
    server = Server(settings, application.state.dataplane)
    threading.Thread(target=_follow_supervisor, args=(stop, server), daemon=True, name="supervisor-pipe").start()
    # A server that cannot start exits with uvicorn's own status (3) from inside run(); one that ends
    # before it was ready, with any status, stops the supervisor (WorkerSupervisor._exited).
    server.run(sockets=[bind_reuseport(config.server.host, port)])


def _follow_supervisor(stop: Connection, server: Any) -> None:
    """Drain on "stop" or when the supervisor is gone (EOF); stop at once on "force"."""
    while True:
        try:
            message = stop.recv()
        except (EOFError, OSError):  # the supervisor died: do not outlive it
            server.should_exit = True
            return
        if message == "force":
            server.force_exit = True
        server.should_exit = True
