"""Calls through the data plane, on the real tiny ONNX model and pinned by mutants (`make mutate`,
docs/TESTING.md): the queue deadline of a call and the model's default, the server limits, a disconnect
seen through `receive`, the drain and graceful-unload deadlines, and each call counted once, on the
backend that answered it (after a failover too)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.errors import ClientClosed, InvalidInput, ModelNotReady, PayloadTooLarge, RequestTimeout, ShuttingDown
from hotswap.serve.dataplane import default_timeout_s
from hotswap.serve.disconnect import GONE
from tests.unit import mutants_repository_support as support
from tests.unit.mutants_repository_support import Gate, X, _config, _plane, _samples

registry = support.registry  # the backends' registry, with the gated and failing test backends


def test_the_queue_deadline_default_is_batching_timeout_ms_in_seconds(tiny, registry):
    assert default_timeout_s(_config(tiny, registry, batching={"timeout_ms": 250}).models[0]) == 0.25
    assert default_timeout_s(_config(tiny, registry).models[0]) is None


def test_each_call_is_counted_once_on_the_runner_that_served_it(tiny, registry):
    async def go():
        async with _plane(tiny, registry) as plane:
            with plane.call("tiny") as call:
                out = await call.infer({"x": X}, 30.0)
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            with pytest.raises(InvalidInput), plane.call("tiny") as call:
                await call.infer({"x": X[:, :3]})
            success = _samples(plane, "hotswap_request_success_total")
            failure = _samples(plane, "hotswap_request_failure_total")
            durations = _samples(plane, "hotswap_request_duration_seconds_count")
            return success, failure, durations

    success, failure, durations = asyncio.run(go())
    assert list(success.values()) == [1.0] and list(durations.values()) == [1.0]
    assert [(dict(k)["reason"], v) for k, v in failure.items()] == [("invalid_input", 1.0)]


def test_a_call_applies_the_server_limits(tiny, registry):
    async def go():
        async with _plane(tiny, registry, server={"limits": {"max_rows": 1}}) as plane:
            with pytest.raises(PayloadTooLarge) as info:
                await plane.call("tiny").infer({"x": X})
            return str(info.value)

    assert asyncio.run(go()) == "request has 2 rows; server.limits.max_rows is 1"


def test_a_request_that_fails_over_is_counted_on_the_backend_that_answered_it(tiny, registry):
    async def go():
        async with _plane(tiny, registry, backends=[{"name": "failing"}, {"name": "onnxruntime"}],
                          failover={"after_errors": 1}) as plane:
            with plane.call("tiny") as call:
                out = await call.infer({"x": X}, 30.0)
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            return {dict(k)["backend"]: v for k, v in _samples(plane, "hotswap_request_success_total").items()}

    assert asyncio.run(go()) == {"failing": 0.0, "onnxruntime": 1.0}


def test_at_the_drain_deadline_a_request_still_running_is_answered_503(tiny, registry):
    Gate.entered.clear()
    Gate.opened.clear()

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}]) as plane:
            request = asyncio.create_task(plane.call("tiny").infer({"x": X}))
            assert await asyncio.to_thread(Gate.entered.wait, 10)
            plane.abandon_waiting()
            try:
                with pytest.raises(ShuttingDown) as info:
                    await asyncio.wait_for(request, 5)
            finally:
                Gate.opened.set()
            return str(info.value)

    assert asyncio.run(go()) == "the server is shutting down and could not finish this request in time; retry"


def _gated() -> None:
    Gate.entered.clear()
    Gate.opened.clear()


def test_a_call_s_timeout_or_else_the_model_s_default_bounds_its_wait_in_the_queue(tiny, registry):
    """One request holds the only instance; the next waits in the queue and times out there."""
    _gated()

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}], batching={"timeout_ms": 60}) as plane:
            first = asyncio.create_task(plane.call("tiny").infer({"x": X}, 30.0))
            assert await asyncio.to_thread(Gate.entered.wait, 10)
            try:
                errors = []
                for timeout_s in (0.6, None):  # 600 ms: a wrong scale shows in the message (601)
                    with pytest.raises(RequestTimeout) as info:
                        await asyncio.wait_for(plane.call("tiny").infer({"x": X}, timeout_s), 5)
                    errors.append(str(info.value))
            finally:
                Gate.opened.set()
            await first
            return errors

    assert asyncio.run(go()) == ["request timed out after 600 ms in the queue (timeout)",
                                 "request timed out after 60 ms in the queue (timeout)"]


def test_without_a_disconnect_signal_the_call_watches_receive(tiny, registry):
    _gated()

    async def receive():
        return {"type": "http.disconnect"}

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}]) as plane:
            try:
                await asyncio.wait_for(plane.call("tiny").infer({"x": X}, None, {}, receive), 5)
            except ClientClosed as exc:
                return str(exc)
            finally:
                Gate.opened.set()

    assert asyncio.run(go()) == GONE


@pytest.mark.parametrize("replace", ["unload", "reload"])
def test_an_unload_or_a_reload_answers_requests_still_queued_at_the_graceful_timeout(tiny, registry, replace):
    """The running batch finishes and answers; the request queued behind it on the old runner is
    refused at the deadline."""
    _gated()

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}], server={"graceful_timeout_s": 0.05}) as plane:
            running = asyncio.create_task(plane.call("tiny").infer({"x": X}))
            assert await asyncio.to_thread(Gate.entered.wait, 10)
            queued = asyncio.create_task(plane.call("tiny").infer({"x": X}))
            await asyncio.sleep(0)
            unloading = asyncio.create_task(plane.unload("tiny") if replace == "unload" else
                                            plane.load("tiny", {"backends": [{"name": "onnxruntime"}]}))
            try:
                with pytest.raises(ModelNotReady) as info:
                    await asyncio.wait_for(queued, 5)
            finally:
                Gate.opened.set()
            out = await running
            await unloading
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            return str(info.value)

    assert asyncio.run(go()) == "model is being unloaded"
