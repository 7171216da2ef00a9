"""serve/server.py pieces driven in-process, without a listening server: the over-capacity answer read
whole, the protocol's choice of it, the SIGTERM exit status and the drain's late answer."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable

from hotswap.config import ServerConfig
from hotswap.serve.protocol import DeadlineProtocol, over_capacity
from hotswap.serve.server import ANSWER_MARGIN_S, HotswapServer, uvicorn_config


def test_the_over_capacity_answer_is_hotswaps_json_503_read_whole():
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        raise AssertionError("the answer does not read the request")

    asyncio.run(over_capacity(7)({"type": "http"}, receive, send))
    body = orjson.dumps({"error": "the server is at its concurrency limit (server.limits.max_concurrency=7 "
                                  "connections and requests at once); retry"})
    assert sent == [
        {"type": "http.response.start", "status": 503,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                     (b"retry-after", b"1"), (b"connection", b"close")]},
        {"type": "http.response.body", "body": body},
    ]


class Unconnected(DeadlineProtocol):
    """The protocol without a connection: only its _start_asgi_task is exercised."""

    def __init__(self) -> None:
        pass


def test_the_protocol_swaps_uvicorns_plain_503_for_its_own_and_leaves_other_apps_alone(monkeypatch):
    chosen: list = []
    monkeypatch.setattr(uvicorn.protocols.http.httptools_impl.HttpToolsProtocol, "_start_asgi_task",
                        lambda self, cycle, app: chosen.append(app))
    mine = over_capacity(3)
    protocol = type("P", (Unconnected,), {"over_capacity": staticmethod(mine)})()

    async def other(scope, receive, send) -> None:
        pass

    protocol._start_asgi_task(None, service_unavailable)  # type: ignore[arg-type]
    protocol._start_asgi_task(None, other)  # type: ignore[arg-type]
    assert chosen == [mine, other]


def test_uvicorn_config_carries_the_server_limits():
    server = ServerConfig(port=9123, limits={"max_concurrency": 5, "header_timeout_s": 3, "keep_alive_s": 4})
    config = uvicorn_config(object(), server)
    assert issubclass(config.http, DeadlineProtocol) and config.http.header_timeout_s == 3
    assert config.http.__name__ == "HotswapHttpProtocol"  # what a traceback from a connection names
    assert config.limit_concurrency == 5 and config.timeout_keep_alive == 4 and config.port == 9123
    assert config.timeout_graceful_shutdown == server.graceful_timeout_s and config.interface == "asgi3"
    assert not config.proxy_headers and not config.access_log and config.h11_max_incomplete_event_size == 65536


class Plane:
    """What HotswapServer needs of the data plane: the flag and the late answer."""

    def __init__(self) -> None:
        self.shutting_down = False
        self.abandoned_at: float | None = None

    def abandon_waiting(self) -> None:
        self.abandoned_at = asyncio.get_running_loop().time()


def test_a_caught_sigterm_is_a_normal_exit_and_sigint_is_not():
    server = HotswapServer(uvicorn.Config(object()), Plane())  # type: ignore[arg-type]
    server._captured_signals = []  # uvicorn's handle_exit notes each signal here, to re-raise after shutdown
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and server._captured_signals == [], "a drained SIGTERM exits 0"
    server.handle_exit(signal.SIGINT, None)
    assert server._captured_signals == [signal.SIGINT], "SIGINT is re-raised after shutdown, as uvicorn does"


def test_shutdown_answers_the_waiting_just_before_uvicorns_deadline(monkeypatch):
    plane = Plane()
    server = HotswapServer(uvicorn.Config(object(), timeout_graceful_shutdown=1), plane)  # type: ignore[arg-type]

    async def slow_shutdown(self, sockets=None) -> None:  # uvicorn's drain, still waiting on requests
        await asyncio.sleep(0.8)

    monkeypatch.setattr(uvicorn.Server, "shutdown", slow_shutdown)

    async def scenario() -> float:
        began = asyncio.get_running_loop().time()
        await server.shutdown()
        assert plane.shutting_down and plane.abandoned_at is not None
        return plane.abandoned_at - began

    after = asyncio.run(scenario())
    # Not before the grace period less the margin; and while uvicorn's drain (0.8 s here) still runs.
    assert 1 - ANSWER_MARGIN_S - 0.01 <= after < 0.8, after


@pytest.mark.parametrize("grace", [0, None])
def test_without_a_grace_period_the_waiting_are_answered_at_once_and_the_sockets_go_to_uvicorn(monkeypatch, grace):
    plane = Plane()
    server = HotswapServer(uvicorn.Config(object(), timeout_graceful_shutdown=grace), plane)  # type: ignore[arg-type]
    closed: list = []

    async def slow_shutdown(self, sockets=None) -> None:
        closed.append(sockets)
        await asyncio.sleep(0.3)

    monkeypatch.setattr(uvicorn.Server, "shutdown", slow_shutdown)
    listening = [object()]  # the worker's inherited socket under --workers: uvicorn closes what it is given

    async def scenario() -> float:
        began = asyncio.get_running_loop().time()
        await server.shutdown(listening)  # type: ignore[arg-type]
        assert plane.abandoned_at is not None
        return plane.abandoned_at - began

    assert asyncio.run(scenario()) < 0.1
    assert closed == [listening]
