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
from collections.abc import Callable
from types import TracebackType

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


class CancelOnDisconnect:
    """`with CancelOnDisconnect(scope, receive):` in a coroutine runs the block in the current task;
    if the client disconnects meanwhile, the task is cancelled and the block ends with
    ClientClosed. Other cancellations pass through. (A class, not an @asynccontextmanager: that
    costs a generator and its context manager on every request; and a plain `with`, since
    entering and leaving never wait: `async with` would cost two coroutines more.)"""

    __slots__ = ("_task", "_signal", "_watcher")

    def __init__(self, scope: Scope | None, receive: Receive | None) -> None:
        self._task = asyncio.current_task()
        self._signal = signal_of(scope)
        self._watcher: asyncio.Future | None = None
        if self._task is not None and self._signal is None and receive is not None:
            self._watcher = asyncio.ensure_future(_watch(receive, self._task))

    def __enter__(self) -> None:
        signal = self._signal
        if signal is not None and self._task is not None:
            if signal.fired:
                raise ClientClosed(GONE)
            signal.on_fire(self._task.cancel)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        signal, watcher, task = self._signal, self._watcher, self._task
        if task is None:
            return
        if signal is not None:
            signal.on_fire(None)
            gone = signal.fired
        else:
            gone = watcher is not None and watcher.done() and not watcher.cancelled()
        if watcher is not None:
            watcher.cancel()
        if gone and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            task.uncancel()
            raise ClientClosed(GONE) from None


async def _watch(receive: Receive, task: asyncio.Task) -> None:
    """Wait for the client to go away, then cancel the request's task."""
    while (await receive())["type"] != "http.disconnect":
        pass  # a body after the body: nothing to do with it
    task.cancel()
