"""OneWriteResponses: a response's headers leave with its body in one write, and never wait past a loop turn."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hotswap.serve.server import OneWriteResponses

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
        held = OneWriteResponses(transport, asyncio.get_running_loop())
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
        held = OneWriteResponses(transport, asyncio.get_running_loop())
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
        held = OneWriteResponses(transport, asyncio.get_running_loop())
        held.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # answered at once, never held
        assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        held.write(HEAD)
        held.close()
        assert writes[-1] == HEAD and held.is_closing()
        peer.close()

    asyncio.run(run())
