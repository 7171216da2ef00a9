"""Knowing that a client went away while its request waits, at no cost per request.

A request whose client disconnected is taken out of the queue and never computed. Under
hotswap's own server the HTTP protocol tells the request directly: it puts a
`DisconnectSignal` in the ASGI scope (`scope["extensions"]["hotswap.disconnect"]`) and fires
it when the connection is lost. Under any other ASGI server (a test client, Ray Serve) the
only way to learn it is to keep a task waiting on `receive()`; that costs a task per request,
so it is the fallback, not the rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.types import Receive, Scope

from hotswap.errors import ClientClosed

EXTENSION = "hotswap.disconnect"
GONE = "the client disconnected before its answer was ready"


class DisconnectSignal:
    """Set by the HTTP protocol when the connection of one request is lost."""

    __slots__ = ("fired", "_callback")

    def __init__(self) -> None:
        self.fired = False
        self._callback: Callable[[], object] | None = None

    def on_fire(self, callback: Callable[[], object] | None) -> None:
        """Call `callback` (once) when the connection is lost; None stops listening."""
        self._callback = callback

    def fire(self) -> None:
        self.fired = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def signal_of(scope: Scope | None) -> DisconnectSignal | None:
    if scope is None:
        return None
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None


@asynccontextmanager
async def cancel_on_disconnect(scope: Scope | None, receive: Receive | None) -> AsyncIterator[None]:
    """Run the block in the current task; if the client disconnects meanwhile, the task is
    cancelled and the block ends with ClientClosed. Other cancellations pass through."""
    task = asyncio.current_task()
    signal = signal_of(scope)
    if task is None or (signal is None and receive is None):
        yield
        return
    watcher: asyncio.Future | None = None
    if signal is not None:
        if signal.fired:
            raise ClientClosed(GONE)
        signal.on_fire(task.cancel)
    else:
        assert receive is not None
        watcher = asyncio.ensure_future(_watch(receive, task))
    try:
        yield
    except asyncio.CancelledError:
        if signal is not None:
            gone = signal.fired
        else:
            gone = watcher is not None and watcher.done() and not watcher.cancelled()
        if not gone:
            raise  # cancelled for another reason (shutdown): let it through
        task.uncancel()
        raise ClientClosed(GONE) from None
    finally:
        if signal is not None:
            signal.on_fire(None)
        if watcher is not None:
            watcher.cancel()


async def _watch(receive: Receive, task: asyncio.Task) -> None:
    """Wait for the client to go away, then cancel the request's task."""
    while (await receive())["type"] != "http.disconnect":
        pass  # a body after the body: nothing to do with it
    task.cancel()
