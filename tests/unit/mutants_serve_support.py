"""Shared by the serve layer's in-process tests pinned by mutants (test_mutants_serve_guard_auth, _guard_body,
_infer, _disconnect). The guard and the infer endpoint are plain ASGI callables: the tests call them, and the
whole app of `create_app` on the real tiny ONNX model, with a scope (`_scope`), a `receive` that hands out the
request's messages and a `send` that records the answer (`Client`), as a server does, and read the answer
whole: status, every header (ASGI wants header names lower-case), the exact body. In-process, a mutant is
caught in milliseconds where the API suites need a uvicorn server per module.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import Message, Receive, Scope, Send

from hotswap.server_config import ServerConfig

JSON = (b"content-type", b"application/json")
END = {"type": "http.request", "body": b"", "more_body": False}


class Client:
    """`receive` for one request: its messages in order, then (as a server) nothing until the client goes."""

    def __init__(self, messages: list[Message], then_disconnect: bool = False) -> None:
        self.messages = list(messages)
        self.then_disconnect = then_disconnect
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        if self.then_disconnect:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # a client that stays and sends nothing more
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def _scope(path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] = (),
           host: bytes | None = b"127.0.0.1:8000") -> Scope:
    host_header = [(b"host", host)] if host is not None else []
    return {"type": "http", "method": method, "path": path, "headers": [*host_header, *headers],
            "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000), "root_path": ""}


def _call(app, path: str = "/v2/models/tiny", headers: list[tuple[bytes, bytes]] = (),
          body: list[Message] | None = None, method: str = "GET", host: bytes | None = b"127.0.0.1:8000",
          ) -> list[Message]:
    client = Client(body or [END])
    asyncio.run(app(_scope(path, method, headers, host), client.receive, client.send))
    return client.sent


def _guard_error(status: int, message: str, *extra: tuple[bytes, bytes]) -> list[Message]:
    """The guard's refusal: content-type first, then content-length, then any extra header."""
    raw = orjson.dumps({"error": message})
    return [{"type": "http.response.start", "status": status,
             "headers": [JSON, (b"content-length", str(len(raw)).encode()), *extra]},
            {"type": "http.response.body", "body": raw}]


async def _reached(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the guard: answers 204 when a request got through."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _server(**section) -> ServerConfig:
    return ServerConfig.model_validate(section)


def _chunk(size: int, more: bool | None) -> Message:
    message: Message = {"type": "http.request", "body": b"x" * size}
    if more is not None:
        message["more_body"] = more
    return message
