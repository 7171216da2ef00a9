"""ResponseWriter: a response's headers leave with its body in one write, and never wait past a loop turn;
a whole answer in one call completes uvicorn's request cycle as its send() would."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from hotswap.serve.protocol import ResponseWriter

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class Counting(asyncio.Protocol):
    pass


async def pair() -> tuple[asyncio.Transport, socket.socket, list[bytes]]:
    """A real transport over a socketpair, with every write() it gets recorded on the way through."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(Counting, sock=ours)
    writes: list[bytes] = []
    real_write = transport.write

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = write  # type: ignore[method-assign]
    return transport, theirs, writes


async def received(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)


@pytest.mark.parametrize("body", [b"hello", b""])
def test_headers_and_body_leave_in_one_write(body):
    async def run() -> None:
        transport, peer, writes = await pair()
        held = ResponseWriter(transport, asyncio.get_running_loop())
        held.write(HEAD)
        held.write(body)
        assert writes == [HEAD + body]
        assert await received(peer) == HEAD + body
        await asyncio.sleep(0)  # the scheduled flush finds nothing held
        assert writes == [HEAD + body]
        transport.close()
        peer.close()

    asyncio.run(run())


def test_headers_alone_go_out_at_the_end_of_the_loop_turn():
    """A streamed answer's first chunk may come much later: its headers must not wait for it."""
    async def run() -> None:
        transport, peer, writes = await pair()
        held = ResponseWriter(transport, asyncio.get_running_loop())
        held.write(HEAD)
        assert writes == []
        assert await received(peer) == HEAD
        held.write(b"chunk")
        assert writes == [HEAD, b"chunk"]
        transport.close()
        peer.close()

    asyncio.run(run())


def test_close_sends_held_headers_first_and_other_writes_pass_straight_through():
    async def run() -> None:
        transport, peer, writes = await pair()
        held = ResponseWriter(transport, asyncio.get_running_loop())
        held.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # answered at once, never held
        assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        held.write(HEAD)
        held.close()
        assert writes[-1] == HEAD and held.is_closing()
        peer.close()

    asyncio.run(run())


# --- answer(): a whole response in one call --------------------------------------------------------------------------


def cycle_on(transport: asyncio.Transport, answered: list, method: str = "POST",
             keep_alive: bool = True) -> RequestResponseCycle:
    """uvicorn's own request cycle over `transport`, recording each call of its on_response."""
    return RequestResponseCycle(
        scope={"type": "http", "method": method}, transport=transport, flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"), access_logger=logging.getLogger("test"), access_log=False,
        default_headers=[], message_event=asyncio.Event(), expect_100_continue=True, keep_alive=keep_alive,
        on_response=lambda: answered.append(True))


DEFAULTS = b"server: uvicorn\r\n"


@pytest.mark.parametrize(("method", "keep_alive", "expected"), [
    ("POST", True, b"HTTP/1.1 201 Created\r\nserver: uvicorn\r\nx-one: 1\r\ncontent-type: a/b\r\n"
                   b"content-length: 2\r\n\r\n{}"),
    ("POST", False, b"HTTP/1.1 201 Created\r\nserver: uvicorn\r\nx-one: 1\r\ncontent-type: a/b\r\n"
                    b"content-length: 2\r\nconnection: close\r\n\r\n{}"),
    ("HEAD", True, b"HTTP/1.1 201 Created\r\nserver: uvicorn\r\nx-one: 1\r\ncontent-type: a/b\r\n"
                   b"content-length: 2\r\n\r\n"),
])
def test_answer_writes_the_whole_response_once_and_completes_the_cycle(method, keep_alive, expected):
    async def run() -> None:
        transport, peer, writes = await pair()
        answered: list = []
        cycle = cycle_on(transport, answered, method, keep_alive)
        writer = ResponseWriter(transport, asyncio.get_running_loop(), cycle, DEFAULTS)
        await writer.answer(201, {"X-One": "1", "content-type": "a/b"}, b"{}")
        assert writes == [expected] and await received(peer) == expected
        assert cycle.response_started and cycle.response_complete and cycle.message_event.is_set()
        assert not cycle.waiting_for_100_continue and answered == [True]
        assert transport.is_closing() is not keep_alive
        with pytest.raises(RuntimeError, match="^the response was already started$"):
            await writer.answer(200, {}, b"")
        transport.close()
        peer.close()

    asyncio.run(run())


def test_answer_writes_nothing_to_a_client_gone_and_waits_while_writing_is_paused():
    async def run() -> None:
        transport, peer, writes = await pair()
        answered: list = []
        gone = cycle_on(transport, answered)
        gone.disconnected = True
        await ResponseWriter(transport, asyncio.get_running_loop(), gone).answer(200, {}, b"x")
        assert writes == [] and answered == [] and not gone.response_started
        cycle = cycle_on(transport, answered)
        cycle.flow.pause_writing()  # the client reads nothing: its answers must not pile up here
        task = asyncio.ensure_future(ResponseWriter(transport, asyncio.get_running_loop(), cycle).answer(200, {}, b"x"))
        await asyncio.sleep(0.01)
        assert not task.done() and writes == []
        cycle.flow.resume_writing()
        await asyncio.wait_for(task, 5)
        assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"] and answered == [True]
        transport.close()
        peer.close()

    asyncio.run(run())


def test_answer_needs_a_request_that_still_exists():
    async def run() -> None:
        transport, peer, _ = await pair()
        with pytest.raises(RuntimeError, match="^this writer has no request to answer$"):
            await ResponseWriter(transport, asyncio.get_running_loop()).answer(200, {}, b"")
        writer = ResponseWriter(transport, asyncio.get_running_loop(), cycle_on(transport, []))
        gc.collect()  # held weakly: the cycle holds the scope, whose extensions hold the writer's answer
        with pytest.raises(RuntimeError, match="^this writer has no request to answer$"):
            await writer.answer(200, {}, b"")
        transport.close()
        peer.close()

    asyncio.run(run())
