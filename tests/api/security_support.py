"""Helpers for the security tests: servers with a chosen `server` section, error checks, metrics sums."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import httpx
import pytest
from api_support import LiveServer, running_server
from tritonclient.utils import InferenceServerException

from hotswap.backends.registry import BackendRegistry
from hotswap.config import parse_config
from hotswap.serve.app import create_app
from hotswap.serve.server import uvicorn_config


def serve(registry: BackendRegistry, server: dict, models: list[dict],
          hotswap_protocol: bool = False) -> AbstractContextManager[LiveServer]:
    """A real uvicorn server for `{"server": server, "models": models}`, as a context manager;
    with `hotswap_protocol`, on hotswap's own HTTP protocol (header deadline, disconnect signal)."""
    config = parse_config({"server": server, "models": models}, "test", registry)
    app = create_app(config, registry)
    http = uvicorn_config(app, config.server).http if hotswap_protocol else "auto"
    return running_server(app, http)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """`response` is `status` with a `{"error": ...}` JSON body holding every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    doc = response.json()
    assert set(doc) == {"error"}, doc
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]
    return doc["error"]


@contextmanager
def triton_error(status: int, *fragments: str) -> Iterator[pytest.ExceptionInfo[InferenceServerException]]:
    """Expect the tritonclient call in the block to be answered `status`, its message holding every fragment."""
    with pytest.raises(InferenceServerException) as info:
        yield info
    error = info.value
    assert error.status() == str(status), f"status {error.status()}: {error.message()}"
    for fragment in fragments:
        assert fragment in error.message(), error.message()


def metric_sum(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and wanted <= sample_labels)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    def error(self) -> str:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)["error"]


def raw_exchange(port: int, head: bytes, chunks: Iterable[bytes] = (), interval_s: float = 0.0,
                 timeout_s: float = 30.0) -> RawResponse:
    """Send `head`, then each chunk `interval_s` apart until the server answers; read one response."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], interval_s)[0]:
                break  # the server answered before the body was complete
            try:
                sock.sendall(chunk)
            except OSError:
                break
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _response_size(data):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    elapsed = time.monotonic() - started
    head_text, _, body = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return RawResponse(int(lines[0].split()[1]), headers, body, elapsed)


def _response_size(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data) + 1  # no length: read until the server closes
