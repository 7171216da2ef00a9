"""Helpers for the HTTP API tests: a real uvicorn server in a thread, /metrics parsing, requests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import tritonclient.http as httpclient
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from hotswap.models.sources import hotswap_home

START_TIMEOUT_S = 60.0
#: The declared signature of the tiny network (TorchScript has none; torch.export names outputs output_N).
TINY_IO = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "z", "datatype": "FP32", "shape": [-1, 1]}],
}


@dataclass
class LiveServer:
    """A running server: `url` for httpx, `host_port` for tritonclient."""

    url: str
    host_port: str
    app: object
    server: uvicorn.Server

    def client(self, **kwargs) -> httpclient.InferenceServerClient:
        kwargs.setdefault("network_timeout", 30.0)
        return httpclient.InferenceServerClient(url=self.host_port, **kwargs)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """Every sample of /metrics as {(sample name, frozenset(labels.items())): value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(app, http: type | str = "auto") -> Iterator[LiveServer]:
    """Serve `app` with a real uvicorn in a thread until the block ends; `http` is uvicorn's
    HTTP protocol (hotswap's own, from hotswap.serve.server.uvicorn_config, or uvicorn's)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=10, http=http, interface="asgi3"))
    exited: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # noqa: BLE001 - uvicorn calls sys.exit(3) when the lifespan fails
            exited.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            why = f" ({type(exited[0]).__name__}: {exited[0]})" if exited else ""
            raise RuntimeError(f"uvicorn exited during start-up{why}: did a model fail to load? See the log above")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop within 30 s"


def tiny_input(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def infer_tiny(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, binary: bool = True,
               **kwargs) -> httpclient.InferResult:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [inp], **kwargs)


def server_section(tmp_path_factory) -> dict:
    """Test servers may load and swap models, from the pytest temp folder and the built-in cache."""
    return {"model_control": "explicit", "model_roots": [str(tmp_path_factory.getbasetemp()), str(hotswap_home())]}
