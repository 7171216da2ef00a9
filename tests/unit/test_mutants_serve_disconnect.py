"""A client's disconnect in-process, pinned by mutants (`make mutate`, docs/TESTING.md): the DisconnectSignal a
connection carries in its scope, and CancelOnDisconnect ending a request when the client goes, with that
signal or, without it, by watching `receive`."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope

from hotswap.errors import ClientClosed
from hotswap.serve.disconnect import EXTENSION, GONE, CancelOnDisconnect, DisconnectSignal, signal_of
from tests.unit.mutants_serve_support import Client

# --- disconnect ----------------------------------------------------------------------------------------------------


def test_a_signal_starts_unfired_calls_its_listener_once_and_fires_with_none():
    signal = DisconnectSignal()
    assert signal.fired is False
    signal.fire()  # nobody listening: nothing to call
    assert signal.fired is True
    calls: list[int] = []
    again = DisconnectSignal()
    again.on_fire(lambda: calls.append(1))
    again.fire()
    again.fire()
    assert calls == [1] and again.fired is True


def test_signal_of_reads_the_scope_extension():
    signal = DisconnectSignal()
    assert signal_of({"extensions": {EXTENSION: signal}}) is signal
    assert signal_of({"extensions": {}}) is None
    assert signal_of({"extensions": None}) is None
    assert signal_of({}) is None
    assert signal_of(None) is None


async def _guarded(scope: Scope | None, receive: Receive | None, work_s: float) -> str:
    with CancelOnDisconnect(scope, receive):
        await asyncio.sleep(work_s)
        return "done"


def _outcome(scope: Scope | None, receive: Receive | None, work_s: float, fire_after_s: float | None = None) -> str:
    async def go() -> str:
        if fire_after_s is not None:
            asyncio.get_running_loop().call_later(fire_after_s, scope["extensions"][EXTENSION].fire)
        try:
            return await asyncio.wait_for(_guarded(scope, receive, work_s), 5)
        except ClientClosed as exc:
            return f"ClientClosed: {exc}"

    return asyncio.run(go())


def test_without_a_signal_a_disconnect_from_receive_ends_the_request():
    client = Client([{"type": "http.request", "body": b"late"}], then_disconnect=True)
    assert _outcome({}, client.receive, 30) == f"ClientClosed: {GONE}"


def test_without_a_signal_more_body_after_the_body_is_not_a_disconnect():
    client = Client([{"type": "http.request", "body": b"late"}])
    assert _outcome({}, client.receive, 0.01) == "done"


def test_a_signal_fired_before_or_during_the_request_ends_it():
    fired = DisconnectSignal()
    fired.fire()
    assert _outcome({"extensions": {EXTENSION: fired}}, None, 30) == f"ClientClosed: {GONE}"
    assert _outcome({"extensions": {EXTENSION: DisconnectSignal()}}, None, 30, fire_after_s=0.01) == (
        f"ClientClosed: {GONE}")
    assert _outcome({"extensions": {EXTENSION: DisconnectSignal()}}, None, 0.01) == "done"


def test_a_cancellation_for_another_reason_passes_through_as_itself():
    async def go() -> str:
        task = asyncio.create_task(_guarded({"extensions": {EXTENSION: DisconnectSignal()}}, None, 30))
        await asyncio.sleep(0.01)
        task.cancel()  # shutdown, say: the client is still there
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except ClientClosed:
            return "ClientClosed"
        return "done"

    assert asyncio.run(go()) == "cancelled"


def test_with_a_signal_nobody_waits_on_receive():
    calls: list[int] = []

    async def receive() -> Message:
        calls.append(1)
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    assert _outcome({"extensions": {EXTENSION: DisconnectSignal()}}, receive, 0.01) == "done"
    assert calls == [], "a task waited on receive() although the protocol's signal was there"
