"""The ASGI guard in front of every route: Host check, bearer tokens, body size and body time.

It runs before any route reads the body, so a request that is not allowed, or too large,
costs no upload and no allocation. Errors are the same `{"error": ...}` JSON as the routes'.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hotswap.errors import (
    ClientClosed,
    ConfigError,
    Forbidden,
    HotswapError,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
)
from hotswap.serve.openai_routes import is_openai_path, openai_error_body
from hotswap.server_config import LOOPBACK_HOSTS, ServerConfig

log = logging.getLogger("hotswap.guard")

#: A timer may fire up to a clock tick before its time: a deadline this close (seconds) counts as passed.
TIMER_SLACK_S = 0.001
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
SCOPE_RANK = {"open": 0, "infer": 1, "admin": 2}
#: Set in a request's `scope["extensions"]` by hotswap's HTTP protocol once the whole body is buffered.
BODY_RECEIVED = "hotswap.body_received"


class BodyTimeout(RequestTimeout):
    """The client did not send its whole body within `server.limits.body_timeout_s`."""

    status = 408
    reason = "body_timeout"


class HostNotAllowed(HotswapError):
    """The Host header names a host this server does not answer for (DNS rebinding guard)."""

    status = 400
    reason = "host_not_allowed"


def read_tokens(config: ServerConfig) -> dict[str, str]:
    """token -> scope, from each source's env variable or file; a missing one is a config error."""
    tokens: dict[str, str] = {}
    for i, source in enumerate(config.auth.tokens):
        key = f"server.auth.tokens.{i}"
        if source.env is not None:
            value = os.environ.get(source.env, "").strip()
            if not value:
                raise ConfigError(f"{key}.env: environment variable {source.env} is not set or empty")
        else:
            try:
                value = Path(source.file).read_text().strip().splitlines()[0].strip() if source.file else ""
            except (OSError, IndexError):
                raise ConfigError(f"{key}.file: cannot read a token from {source.file}") from None
        if len(value) < 16:
            raise ConfigError(f"{key}: a token needs at least 16 characters")
        tokens[value] = source.scope
    return tokens


def allowed_hosts(config: ServerConfig) -> frozenset[str] | None:
    """Host header names accepted; None accepts any."""
    if config.allowed_hosts is not None:
        return None if "*" in config.allowed_hosts else frozenset(h.lower() for h in config.allowed_hosts)
    return frozenset(LOOPBACK_HOSTS) | {"[::1]"} if config.is_loopback() else None


def check_exposure(config: ServerConfig) -> None:
    """Refuse to serve a non-loopback address with no tokens, unless anonymous access is explicit.

    Also reads every token now: the Guard itself is built at the app's first ASGI call, too
    late for a missing token to be a config error at start-up."""
    read_tokens(config)
    if not config.is_loopback() and not config.auth.tokens and not config.auth.allow_anonymous:
        raise ConfigError(f"server.host: {config.host} is reachable from other machines but server.auth.tokens "
                          "is empty; add tokens, or set server.auth.allow_anonymous: true to serve without them")


def required_scope(path: str, metrics_scope: str) -> str:
    if path in OPEN_PATHS:
        return "open"
    if path == "/metrics":
        return metrics_scope
    if path.startswith("/v2/repository"):
        return "admin"
    return "infer"


async def send_error(send: Send, exc: HotswapError, headers: list[tuple[bytes, bytes]] | None = None,
                     path: str = "") -> None:
    """The refusal as JSON, in the error shape of the protocol the path belongs to."""
    content = openai_error_body(exc.status, str(exc), exc) if is_openai_path(path) else {"error": str(exc)}
    body = orjson.dumps(content)
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware enforcing `server.allowed_hosts`, `server.auth` and `server.limits` body bounds."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self._tokens = read_tokens(config)
        self._hosts = allowed_hosts(config)
        self._metrics_scope = config.auth.metrics
        self._max_body = config.limits.max_body_bytes
        self._body_timeout = config.limits.body_timeout_s
        self._deadlines = BodyDeadlines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = authorization = length = None
        for name, value in scope["headers"]:  # the last of a repeated header counts, as in a dict of them
            if name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value
        problem = self._refusal(scope["path"], host, authorization, length)
        if problem is not None:
            exc, headers = problem
            await send_error(send, exc, headers, scope["path"])
            return
        extensions = scope.get("extensions")
        if length is not None and extensions and extensions.get(BODY_RECEIVED):
            # A body of an allowed Content-Length, already all here: it can be neither too large nor late.
            await self.app(scope, receive, send)
        else:
            await self.app(scope, self._bounded(scope, receive), send)

    def _refusal(self, path: str, host: bytes | None, authorization: bytes | None,
                 length: bytes | None) -> tuple[HotswapError, list[tuple[bytes, bytes]]] | None:
        if self._hosts is not None:
            name = (host or b"").decode("latin-1").lower()
            bare = name.rsplit(":", 1)[0] if not name.endswith("]") else name
            if bare not in self._hosts:
                return HostNotAllowed(f"Host {name!r} is not in server.allowed_hosts"), []
        if self._tokens:
            needed = required_scope(path, self._metrics_scope)
            if needed != "open":
                refusal = self._authorise(authorization or b"", needed)
                if refusal is not None:
                    return refusal
        if length is not None and (not length.isdigit() or int(length) > self._max_body):
            return PayloadTooLarge(f"body of {length.decode('latin-1')} bytes exceeds server.limits."
                                   f"max_body_bytes={self._max_body}"), []
        return None

    def _authorise(self, header: bytes, needed: str) -> tuple[HotswapError, list[tuple[bytes, bytes]]] | None:
        challenge = [(b"www-authenticate", b'Bearer realm="hotswap"')]
        kind, _, token = header.decode("latin-1").partition(" ")
        if kind.lower() != "bearer" or not token:
            return Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'"), challenge
        scope = None
        for known, known_scope in self._tokens.items():
            # Compare against every token, in constant time each: no early exit to time.
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                scope = known_scope
        if scope is None:
            return Unauthorized("invalid bearer token"), challenge
        if SCOPE_RANK[scope] < SCOPE_RANK[needed]:
            return Forbidden(f"this token's scope is '{scope}'; this endpoint needs '{needed}'"), []
        return None

    def _bounded(self, scope: Scope, receive: Receive) -> Receive:
        """receive() that stops a body over the limit, or one not complete within body_timeout_s.

        The deadline is for the whole body, counted from the request's headers: a client that
        dribbles a byte at a time must not hold the connection any longer than a silent one."""
        received = 0
        done = False
        max_body, timeout, deadlines = self._max_body, self._body_timeout, self._deadlines
        deadline = asyncio.get_running_loop().time() + timeout

        async def bounded_receive() -> Message:
            nonlocal received, done
            if done:  # after the body only a disconnect can come: no deadline on it
                return await receive()
            task = deadlines.watch(deadline)
            cancelling = task.cancelling()
            try:
                message = await receive()
            except BaseException as exc:
                # Cancelled at its deadline: that cancellation is taken back and becomes a 408, unless
                # someone else (shutdown) asked for one too, which goes on.
                if (deadlines.end(task) and task.uncancel() <= cancelling
                        and isinstance(exc, asyncio.CancelledError)):
                    raise BodyTimeout(f"request body not received within server.limits.body_timeout_s="
                                      f"{timeout:g}") from None
                raise
            deadlines.end(task)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise PayloadTooLarge(f"body exceeds server.limits.max_body_bytes={max_body}")
                done = not message.get("more_body", False)
            else:  # gone before its whole body came: nobody reads the answer, and nothing failed here
                raise ClientClosed("the client disconnected before sending its whole body")
            return message

        return bounded_receive


class BodyDeadlines:
    """The body reads waiting right now and their deadlines, watched by one timer for all of them.

    A timer per read (asyncio.timeout_at) armed and cancelled a timer handle on every request,
    about a tenth of the event loop's time per small request, though almost every body has
    arrived with its headers. Here a read costs two dict operations; the one timer is armed at
    the earliest deadline and, when it fires, cancels the reads past theirs (each read then
    raises BodyTimeout) and re-arms at the next."""

    __slots__ = ("_reads", "_expired", "_timer", "_when", "_loop")

    def __init__(self) -> None:
        self._reads: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._when = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, deadline: float) -> asyncio.Task:
        """The current task is about to wait for body bytes until `deadline` (loop time)."""
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is None:
            raise RuntimeError("a body is read outside of a task")
        if loop is not self._loop:  # a new event loop (tests run several): the old timer is gone with its loop
            self._loop, self._timer, self._when = loop, None, math.inf
        self._reads[task] = deadline
        if deadline < self._when:
            self._arm(deadline)
        return task

    def end(self, task: asyncio.Task) -> bool:
        """The task's read is over; True if it was cancelled because its deadline passed."""
        self._reads.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._when = self._loop.call_at(when, self._check), when

    def _check(self) -> None:
        self._timer, self._when = None, math.inf
        assert self._loop is not None
        now = self._loop.time() + TIMER_SLACK_S  # a timer may fire a clock tick early
        for task, deadline in list(self._reads.items()):
            if deadline <= now:
                del self._reads[task]
                self._expired.add(task)
                task.cancel()
        if self._reads:
            self._arm(min(self._reads.values()))
