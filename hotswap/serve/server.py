"""The HTTP server around the app: uvicorn with hotswap's limits and a drain that answers everyone.

On SIGTERM the server stops accepting connections, reports not-ready, and lets queued and
running requests finish for `server.graceful_timeout_s`. Shortly before uvicorn would
cancel what is left (a plain-text 500), every request still waiting gets a 503 JSON answer
with Retry-After instead. A drained SIGTERM exits with status 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType

import orjson
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from hotswap.config import ServerConfig
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.disconnect import EXTENSION, DisconnectSignal, signal_of
from hotswap.serve.guard import TIMER_SLACK_S

#: Seconds before uvicorn's own deadline at which the waiting requests are answered 503.
ANSWER_MARGIN_S = 0.5


class OneWriteResponses:
    """A response's transport that holds its status line and headers back until the body's first
    write (or the end of the loop turn, whichever is first), so a small answer leaves in one
    write() instead of two: on loopback and in VMs each write costs a system call and wakes the
    client, and the headers alone were written first, by uvicorn, in a call of their own."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._held = data
            self._loop.call_soon(self.flush)  # a body that never comes must not keep the headers
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def over_capacity(limit: int) -> ASGI3Application:
    """The answer to a request beyond `server.limits.max_concurrency`: hotswap's 503 JSON with
    Retry-After, not uvicorn's plain-text one, so clients parse it like any other refusal."""
    body = orjson.dumps({"error": f"the server is at its concurrency limit (server.limits.max_concurrency="
                                  f"{limit} connections and requests at once); retry"})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"1"), (b"connection", b"close")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app  # type: ignore[return-value]


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, but a connection whose request headers do not arrive within
    `header_timeout_s` is closed: silent sockets and slowly dripped headers cannot pile up
    (uvicorn's own keep-alive timeout only covers the idle time between requests); and a request
    over the concurrency limit gets hotswap's JSON 503."""

    header_timeout_s = 10.0
    over_capacity = staticmethod(service_unavailable)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn picks its plain-text service_unavailable when over limit_concurrency.
        super()._start_asgi_task(cycle, self.over_capacity if app is service_unavailable else app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # One timer per connection, not one armed and cancelled per request: it fires at most
        # every header_timeout_s and closes the connection only if headers are still awaited
        # past the deadline; otherwise it re-arms for the request that is waiting, or stops.
        self._header_deadline: asyncio.TimerHandle | None = None
        self._headers_since: float | None = None
        self._await_headers()

    def _await_headers(self) -> None:
        self._headers_since = self.loop.time()
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_at(self._headers_since + self.header_timeout_s,
                                                      self._check_headers)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _check_headers(self) -> None:
        self._header_deadline = None
        since = self._headers_since
        if since is None:  # no request is waiting for its headers: the next one re-arms
            return
        if since + self.header_timeout_s > self.loop.time() + TIMER_SLACK_S:
            self._header_deadline = self.loop.call_at(since + self.header_timeout_s, self._check_headers)
        elif not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._headers_since = None
        # Before the request's task exists: a queued request learns of a lost connection from
        # this signal instead of a task of its own waiting on receive().
        self.scope.setdefault("extensions", {})[EXTENSION] = DisconnectSignal()  # type: ignore[assignment]
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.transport = OneWriteResponses(self.transport, self.loop)  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            lost = signal_of(cycle.scope)  # type: ignore[arg-type]
            if lost is not None:
                lost.fire()


def uvicorn_config(app: object, server: ServerConfig, **overrides: object) -> uvicorn.Config:
    """uvicorn settings from `server`: bind address, keep-alive, concurrency, header and drain bounds."""
    protocol = type("HotswapHttpProtocol", (HeaderDeadlineProtocol,),
                    {"header_timeout_s": server.limits.header_timeout_s,
                     "over_capacity": staticmethod(over_capacity(server.limits.max_concurrency))})
    settings: dict = {
        "http": protocol,
        "host": server.host, "port": server.port, "log_level": server.log_level, "log_config": None,
        "access_log": False, "timeout_graceful_shutdown": server.graceful_timeout_s,
        "timeout_keep_alive": server.limits.keep_alive_s, "limit_concurrency": server.limits.max_concurrency,
        # Bounds one request's headers (h11) before the app sees them.
        "h11_max_incomplete_event_size": 64 * 1024,
        # Nothing in hotswap reads the client address (no access log; the Host check reads Host),
        # so X-Forwarded-* rewriting would be one more layer on every request for nothing.
        "proxy_headers": False,
        # Said, not guessed: uvicorn's guess inspects __call__, which wrappers (mutmut's) can hide.
        "interface": "asgi3",
    }
    return uvicorn.Config(app, **(settings | overrides))  # type: ignore[arg-type]


class HotswapServer(uvicorn.Server):
    """uvicorn.Server whose shutdown answers every waiting request and exits 0 after SIGTERM."""

    def __init__(self, config: uvicorn.Config, plane: DataPlane) -> None:
        super().__init__(config)
        self._plane = plane

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn re-raises a caught signal after shutdown (status 143); a drain is a normal exit.
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._plane.shutting_down = True
        grace = self.config.timeout_graceful_shutdown or 0
        loop = asyncio.get_running_loop()
        late = loop.call_later(max(0.0, grace - ANSWER_MARGIN_S), self._plane.abandon_waiting)
        try:
            await super().shutdown(sockets)
        finally:
            late.cancel()
