"""What hotswap's HTTP protocol puts in a request's scope, on a real socket: the disconnect signal, the mark
that the body is all here (before the app runs, for a body sent with its headers; later for one that follows),
and the one-call answer, which the infer route uses."""

from __future__ import annotations

import asyncio
import socket

from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from hotswap.config import ServerConfig
from hotswap.serve.disconnect import EXTENSION, DisconnectSignal
from hotswap.serve.guard import BODY_RECEIVED
from hotswap.serve.infer_endpoint import ANSWER_EXTENSION
from hotswap.serve.server import uvicorn_config

BODY = b'{"inputs": []}'


def request(length: int = len(BODY)) -> bytes:
    return b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % length


async def exchange(*parts: bytes) -> tuple[dict, bytes]:
    """Send `parts` (a short pause between them) to the protocol; what the app saw, and the answer."""
    seen: dict = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope["extensions"]
        seen["received_at_start"] = extensions.get(BODY_RECEIVED, False)
        seen["body"] = (await receive())["body"]
        seen["received_after_read"] = extensions.get(BODY_RECEIVED, False)
        seen["signal"] = extensions.get(EXTENSION)
        await extensions[ANSWER_EXTENSION](200, {"content-type": "text/plain"}, b"ok")

    config = uvicorn_config(app, ServerConfig())
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(lambda: protocol, sock=ours)
    for i, part in enumerate(parts):
        if i:
            await asyncio.sleep(0.05)
        await loop.sock_sendall(theirs, part)
    answer = b""
    while not answer.endswith(b"ok"):
        answer += await asyncio.wait_for(loop.sock_recv(theirs, 4096), 5)
    transport.close()
    theirs.close()
    await asyncio.sleep(0.01)  # connection_lost runs on the loop
    seen["timer_after_close"] = protocol._timer
    return seen, answer


def test_a_body_sent_with_its_headers_is_marked_received_before_the_app_runs():
    seen, answer = asyncio.run(exchange(request() + BODY))
    assert seen["received_at_start"] is True and seen["body"] == BODY
    assert isinstance(seen["signal"], DisconnectSignal) and not seen["signal"].fired
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-type: text/plain\r\ncontent-length: 2\r\n" in answer
    assert seen["timer_after_close"] is None, "a closed connection keeps no deadline timer"


def test_a_body_that_follows_its_headers_is_marked_only_once_it_is_all_here():
    seen, _ = asyncio.run(exchange(request(), BODY[:5], BODY[5:]))
    assert seen["received_at_start"] is False and seen["received_after_read"] is False  # read in pieces
    assert seen["body"] == BODY[:5]
