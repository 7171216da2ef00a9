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

import uvicorn

from hotswap.config import ServerConfig
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.protocol import DeadlineProtocol, over_capacity

#: Seconds before uvicorn's own deadline at which the waiting requests are answered 503.
ANSWER_MARGIN_S = 0.5


def uvicorn_config(app: object, server: ServerConfig, **overrides: object) -> uvicorn.Config:
    """uvicorn settings from `server`: bind address, keep-alive, concurrency, header and drain bounds."""
    protocol = type("HotswapHttpProtocol", (DeadlineProtocol,),
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
