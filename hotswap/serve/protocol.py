"""hotswap's HTTP protocol: uvicorn's httptools protocol with deadlines and cheaper responses.

Over uvicorn's own, per connection:
- one timer for both of its deadlines (request headers within `header_timeout_s`, the next
  request within `keep_alive_s` of an answer), where uvicorn arms and cancels a keep-alive
  timer on every request;
- a request over `max_concurrency` gets hotswap's JSON 503, not uvicorn's plain text;
- a lost connection fires the request's `DisconnectSignal` (serve/disconnect.py), and a body
  received whole is marked so in the scope (the guard has no size or time to watch then);
- a response's headers leave with its body in one write (`ResponseWriter`), and a route that
  builds its own headers (infer) can send a whole answer in one call
  (`scope["extensions"]["hotswap.answer"]`) instead of two ASGI messages.
"""

from __future__ import annotations

import asyncio
import math
import weakref

import orjson
from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from hotswap.serve.disconnect import EXTENSION, DisconnectSignal, signal_of
from hotswap.serve.guard import BODY_RECEIVED, TIMER_SLACK_S
from hotswap.serve.infer_endpoint import ANSWER_EXTENSION


class ResponseWriter:
    """A response's transport that holds its status line and headers back until the body's first
    write (or the end of the loop turn, whichever is first), so a small answer leaves in one
    write() instead of two: on loopback and in VMs each write costs a system call and wakes the
    client, and the headers alone were written first, by uvicorn, in a call of their own.

    `answer()` sends a whole response at once, skipping the ASGI messages altogether."""

    __slots__ = ("_transport", "_loop", "_held", "_cycle", "_defaults")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 cycle: RequestResponseCycle | None = None, defaults: bytes = b"") -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None
        # Weak: the cycle holds the scope, whose extensions hold this writer's answer(); a strong
        # reference would make every request a reference cycle, freed only by the collector.
        self._cycle = None if cycle is None else weakref.ref(cycle)
        self._defaults = defaults  # uvicorn's default headers (date, server), as header lines

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

    async def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """The whole response in one write: what uvicorn's send() does with a start and a complete
        body, less its checks of each header. For the caller's own headers only, never a client's:
        they are written as they are."""
        cycle = None if self._cycle is None else self._cycle()
        if cycle is None:
            raise RuntimeError("this writer has no request to answer")
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()  # a client that reads nothing must not have answers pile up here
        if cycle.disconnected:
            return
        if cycle.response_started:
            raise RuntimeError("the response was already started")
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        lines = "".join(f"{name.lower()}: {value}\r\n" for name, value in headers.items()).encode("latin-1")
        close = b"" if cycle.keep_alive else b"connection: close\r\n"
        content = b"" if cycle.scope["method"] == "HEAD" else body  # HEAD: the length, never the bytes
        self._transport.write(b"".join((STATUS_LINE[status], self._defaults, lines,
                                        b"content-length: %d\r\n" % len(body), close, b"\r\n", content)))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self._transport.close()
        cycle.on_response()


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


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, but a connection whose request headers do not arrive within
    `header_timeout_s` is closed, so silent sockets and slowly dripped headers cannot pile up;
    an idle one is closed `keep_alive_s` after its last answer, as uvicorn does, by the same timer."""

    header_timeout_s = 10.0
    over_capacity = staticmethod(service_unavailable)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn picks its plain-text service_unavailable when over limit_concurrency.
        super()._start_asgi_task(cycle, self.over_capacity if app is service_unavailable else app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # One timer per connection, not one armed and cancelled per request: it fires at the
        # deadline it was armed for and closes the connection only if that deadline, or an
        # earlier one set since, has passed; otherwise it re-arms for the current one, or stops.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._defaults: tuple[list[tuple[bytes, bytes]] | None, bytes] = (None, b"")
        self._expect(self.header_timeout_s)

    def _expect(self, within_s: float) -> None:
        """The connection must send something (more headers, a next request) within `within_s`."""
        deadline = self._deadline = self.loop.time() + within_s
        if deadline < self._timer_at - TIMER_SLACK_S:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self.loop.call_at(when, self._check_deadline), when

    def _check_deadline(self) -> None:
        self._timer, self._timer_at = None, math.inf
        deadline = self._deadline
        if deadline is None:  # a request is being answered: the next deadline re-arms
            return
        if deadline > self.loop.time() + TIMER_SLACK_S:  # a timer may fire a clock tick early
            self._arm(deadline)
        elif not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect(self.header_timeout_s)  # this request's headers, counted from its first byte

    def on_headers_complete(self) -> None:
        self._deadline = None
        # Before the request's task exists: a queued request learns of a lost connection from
        # this signal instead of a task of its own waiting on receive().
        extensions: dict[str, object] = self.scope.setdefault("extensions", {})  # type: ignore[assignment]
        extensions[EXTENSION] = DisconnectSignal()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            writer = ResponseWriter(self.transport, self.loop, cycle, self._default_lines())
            cycle.transport = writer  # type: ignore[assignment]
            extensions[ANSWER_EXTENSION] = writer.answer

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Usually before the request's task first runs: the guard then leaves `receive` unwrapped.
        extensions: dict[str, object] | None = self.scope.get("extensions")  # type: ignore[assignment]
        if extensions is not None:
            extensions[BODY_RECEIVED] = True

    def _default_lines(self) -> bytes:
        """uvicorn's default headers as header lines; the server renews the list once a second."""
        headers = self.server_state.default_headers
        if self._defaults[0] is not headers:
            self._defaults = (headers, b"".join(b"%s: %s\r\n" % pair for pair in headers))
        return self._defaults[1]

    def on_response_complete(self) -> None:
        # uvicorn's, less its keep-alive timer per request: the idle deadline is the connection's timer's.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline is None:  # unless the next request's headers are already on their way
            self._expect(self.timeout_keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            lost = signal_of(cycle.scope)  # type: ignore[arg-type]
            if lost is not None:
                lost.fire()
