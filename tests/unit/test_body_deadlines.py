"""BodyDeadlines (hotswap/serve/guard.py): one timer for every body read waiting, each read cancelled
at its own deadline and told apart from a cancellation that is not its deadline's; a read over in time
forgotten (its task runs on), and one outside of a task refused."""

from __future__ import annotations

import asyncio

import pytest

from hotswap.serve.guard import TIMER_SLACK_S, BodyDeadlines, BodyTimeout, Guard
from hotswap.server_config import ServerConfig


async def _read(deadlines: BodyDeadlines, after_s: float, arrives: asyncio.Event) -> tuple[str, float]:
    """Wait for `arrives` as a body read due `after_s` from now; what ended it, and when (loop time)."""
    loop = asyncio.get_running_loop()
    task = deadlines.watch(loop.time() + after_s)
    try:
        await arrives.wait()
    except asyncio.CancelledError:
        return ("expired" if deadlines.end(task) else "cancelled"), loop.time()
    return ("expired" if deadlines.end(task) else "read"), loop.time()


def _run(*reads: tuple[float, float | None]) -> list[tuple[str, float]]:
    """Start one read per (deadline in s, body arriving after s or never), in order; their ends,
    the times counted from the start."""
    async def go() -> list[tuple[str, float]]:
        deadlines, loop = BodyDeadlines(), asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for after_s, arrives_s in reads:
            event = asyncio.Event()
            if arrives_s is not None:
                loop.call_later(arrives_s, event.set)
            tasks.append(asyncio.create_task(_read(deadlines, after_s, event)))
            await asyncio.sleep(0)  # each read starts watching before the next one
        ends = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return [(what, at - start) for what, at in ends]

    return asyncio.run(go())


def test_a_read_past_its_deadline_is_cancelled_and_one_that_arrives_in_time_is_not():
    (late, late_at), (read, read_at) = _run((0.05, None), (1.0, 0.1))
    assert late == "expired" and 0.04 <= late_at < 0.5
    assert read == "read" and 0.09 <= read_at < 0.5


def test_a_later_deadline_re_arms_the_timer_after_the_earlier_one():
    (first, first_at), (second, second_at) = _run((0.05, None), (0.2, None))
    assert (first, second) == ("expired", "expired")
    assert 0.04 <= first_at < 0.15 and 0.19 <= second_at < 0.6, (first_at, second_at)


def test_an_earlier_deadline_than_the_armed_one_is_not_kept_waiting_for_it():
    (late, late_at), (early, early_at) = _run((2.0, 0.3), (0.05, None))
    assert early == "expired" and early_at < 0.25, early_at
    assert late == "read"


def test_each_event_loop_gets_a_timer_of_its_own():
    deadlines = BodyDeadlines()

    async def one() -> str:
        loop = asyncio.get_running_loop()
        task = deadlines.watch(loop.time() + 0.05)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "expired" if deadlines.end(task) else "cancelled"
        return "slept"

    assert asyncio.run(asyncio.wait_for(one(), 2)) == "expired"
    assert asyncio.run(asyncio.wait_for(one(), 2)) == "expired", "the timer of a closed loop was kept"


def _guarded_read(server: ServerConfig, during: object = None) -> BaseException | None:
    """One body read through the guard from a client that never sends; what it raised."""
    guard = Guard(lambda scope, receive, send: None, server)  # type: ignore[arg-type, return-value]

    async def never() -> dict:
        await asyncio.sleep(30)
        return {}

    async def go() -> BaseException | None:
        receive = guard._bounded({"type": "http"}, never)
        task = asyncio.create_task(receive())
        if during is not None:
            asyncio.get_running_loop().call_later(0.01, during, guard, task)
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except BaseException:  # noqa: BLE001 - what the read ended with is the observation
            pass
        return task.exception() if not task.cancelled() else asyncio.CancelledError()

    return asyncio.run(go())


def test_through_the_guard_the_deadline_is_a_408_and_the_task_is_not_left_cancelling():
    error = _guarded_read(ServerConfig(limits={"body_timeout_s": 0.05}))
    assert isinstance(error, BodyTimeout) and "body_timeout_s=0.05" in str(error)


def test_a_cancellation_asked_for_by_someone_else_at_the_deadline_still_cancels():
    def both(guard: Guard, task: asyncio.Task) -> None:  # shutdown cancels it in the turn its deadline passed
        task.cancel()
        guard._deadlines._reads[task] = 0.0
        guard._deadlines._check()

    assert isinstance(_guarded_read(ServerConfig(limits={"body_timeout_s": 30}), both), asyncio.CancelledError)


@pytest.mark.parametrize("body_timeout_s", [30, 0.05])
def test_a_plain_cancellation_is_not_a_timeout(body_timeout_s):
    def cancel(guard: Guard, task: asyncio.Task) -> None:
        task.cancel()

    assert isinstance(_guarded_read(ServerConfig(limits={"body_timeout_s": body_timeout_s}), cancel),
                      asyncio.CancelledError)


def test_a_receive_that_turns_the_cancellation_into_its_own_error_leaves_the_task_not_cancelling():
    guard = Guard(lambda scope, receive, send: None, ServerConfig(limits={"body_timeout_s": 0.05}))  # type: ignore[arg-type, return-value]

    async def odd() -> dict:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise OSError("connection gone") from None
        return {}

    async def go() -> tuple[str, int]:
        try:
            await guard._bounded({"type": "http"}, odd)()
        except OSError as exc:
            return str(exc), asyncio.current_task().cancelling()  # type: ignore[union-attr]
        return "read", 0

    assert asyncio.run(go()) == ("connection gone", 0)


class _FrozenClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock stands still at `now`: deadlines compared to the microsecond."""

    now = 1000.0

    def time(self) -> float:
        return self.now


def test_the_timer_expires_every_read_due_within_its_slack_of_now():
    """A timer may fire a clock tick before its time: when it fires, reads due up to TIMER_SLACK_S
    from now (that one included) are expired with it, not left for a timer re-armed a tick later."""

    async def go() -> list[bool]:
        deadlines = BodyDeadlines()
        now = _FrozenClockLoop.now

        async def read(due: float) -> bool:
            task = deadlines.watch(due)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return deadlines.end(task)
            return False

        dues = (now + TIMER_SLACK_S / 2, now + TIMER_SLACK_S, now + 2 * TIMER_SLACK_S)
        tasks = [asyncio.create_task(read(due)) for due in dues]
        await asyncio.sleep(0)  # every read is watching
        deadlines._check()  # the timer, firing now
        await asyncio.sleep(0)
        done = [task.done() for task in tasks]
        for task in tasks:
            task.cancel()  # a cancellation not its deadline's, for those still waiting
        return done + list(await asyncio.gather(*tasks))

    loop = _FrozenClockLoop()
    try:
        assert loop.run_until_complete(go()) == [True, True, False, True, True, False]
    finally:
        loop.close()


async def _computing_past_the_deadline() -> str:
    """The request, its body read, computing for long past the read's deadline: cancelled or not."""
    try:
        await asyncio.sleep(0.3)
    except asyncio.CancelledError:
        return "cancelled though its read was over"
    return "ran on"


def test_a_read_that_ended_in_time_is_forgotten_so_its_task_runs_on_past_the_deadline():
    async def go() -> str:
        deadlines, loop = BodyDeadlines(), asyncio.get_running_loop()
        task = deadlines.watch(loop.time() + 0.05)
        assert deadlines.end(task) is False  # the body came at once; the timer armed for it still fires
        return await _computing_past_the_deadline()

    assert asyncio.run(asyncio.wait_for(go(), 5)) == "ran on"


def test_after_one_read_expired_the_same_task_s_next_read_in_time_is_not_reported_expired():
    async def go() -> tuple[bool, bool]:
        deadlines, loop = BodyDeadlines(), asyncio.get_running_loop()
        task = deadlines.watch(loop.time() + 0.02)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            first = deadlines.end(task)
        task.uncancel()
        deadlines.watch(loop.time() + 5)
        return first, deadlines.end(task)  # the second read's bytes came in time

    assert asyncio.run(asyncio.wait_for(go(), 5)) == (True, False)


def test_through_the_guard_a_body_read_in_time_leaves_the_request_running_past_the_deadline():
    guard = Guard(lambda scope, receive, send: None, ServerConfig(limits={"body_timeout_s": 0.05}))  # type: ignore[arg-type, return-value]

    async def at_once() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def go() -> str:
        message = await guard._bounded({"type": "http"}, at_once)()
        assert message["body"] == b"{}"
        return await _computing_past_the_deadline()

    assert asyncio.run(asyncio.wait_for(go(), 5)) == "ran on"


def test_a_read_outside_of_a_task_is_refused():
    async def go() -> str:
        loop = asyncio.get_running_loop()
        refused = loop.create_future()

        def callback() -> None:  # on the loop, but in no task: there is nothing to cancel at the deadline
            try:
                BodyDeadlines().watch(loop.time() + 1)
            except RuntimeError as exc:
                refused.set_result(str(exc))

        loop.call_soon(callback)
        return await refused

    assert asyncio.run(asyncio.wait_for(go(), 5)) == "a body is read outside of a task"
