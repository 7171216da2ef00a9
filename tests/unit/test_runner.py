"""ModelRunner and the app lifespan with a real onnxruntime session on the tiny network.

Orderings are forced, not timed: a batch is held "running" by occupying its instance's
own worker thread (as a long previous batch would) until the test releases it. Every
scenario runs under asyncio.wait_for, so a hang fails instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.config import ModelConfig, parse_config
from hotswap.errors import ModelNotReady
from hotswap.serve.app import create_app
from hotswap.serve.batch import BatchHung
from hotswap.serve.metrics import Metrics
from hotswap.serve.runner import ModelRunner
from hotswap.testing import TinyModels

REGISTRY = BackendRegistry(available={"onnxruntime": OnnxRuntimeBackend})
SCENARIO_TIMEOUT_S = 30


def run(coro):
    async def guarded():
        return await asyncio.wait_for(coro, SCENARIO_TIMEOUT_S)

    return asyncio.run(guarded())


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 8)).astype(np.float32)


async def until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def test_cancelled_request_mid_batch_leaves_others_their_rows(tiny: TinyModels):
    """Four requests (2, 3, 1, 4 rows) fill one 10-row batch; the second is cancelled while that batch
    runs. Its rows are still computed (one batch of 10), and every other request gets exactly its own rows."""
    sizes = (2, 3, 1, 4)
    xs = [rows(n, seed) for seed, n in enumerate(sizes)]

    async def scenario() -> None:
        config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}],
                             batching={"max_batch_size": sum(sizes), "max_queue_delay_ms": 10_000,
                                       "adaptive_delay": False})
        metrics = Metrics()
        runner = ModelRunner(config, REGISTRY, metrics)
        await runner.start()
        gate = threading.Event()
        busy = runner._executors[0].submit(gate.wait, SCENARIO_TIMEOUT_S)  # the instance thread is taken
        try:
            tasks = [asyncio.create_task(runner.infer({"x": x}, None)) for x in xs]
            await until(lambda: len(runner._waiting) == len(sizes)
                        and all(r.started is not None for r in runner._waiting), "the batch is running")
            tasks[1].cancel()
            await asyncio.sleep(0)
            gate.set()
            answers = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            gate.set()
            busy.result()
            await runner.close()
        assert isinstance(answers[1], asyncio.CancelledError)
        for index in (0, 2, 3):
            want = tiny.reference({"x": xs[index]})
            for name in ("y", "z"):
                np.testing.assert_allclose(answers[index][name], want[name], atol=1e-5, rtol=0,
                                           err_msg=f"request {index} output {name}")
        labels = {"model": "tiny", "version": "1", "backend": "onnxruntime", "device": "cpu"}
        assert metrics.registry.get_sample_value("hotswap_execution_count_total", labels) == 1
        assert metrics.registry.get_sample_value("hotswap_inference_count_total", labels) == sum(sizes)
        for stage in ("input", "output"):  # the batch's concatenation and scatter: short, never negative
            took = metrics.registry.get_sample_value(f"hotswap_compute_{stage}_duration_seconds_sum", labels)
            assert 0 <= took < 0.5, (stage, took)

    run(scenario())


def test_the_next_batch_is_taken_before_the_last_batchs_answers_reach_their_callers(tiny: TinyModels):
    """The instance frees up: the worker hands it the queued request before the first caller resumes."""
    xa, xb = rows(1, 7), rows(1, 8)

    async def scenario() -> tuple[dict, int, dict]:
        config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}],
                             batching={"max_batch_size": 1, "max_queue_delay_ms": 0, "inline_max_us": 0})
        runner = ModelRunner(config, REGISTRY, Metrics())
        await runner.start()
        gate = threading.Event()
        busy = runner._executors[0].submit(gate.wait, SCENARIO_TIMEOUT_S)  # the instance thread is taken

        async def first_then_queued() -> tuple[dict, int]:
            answer = await runner.infer({"x": xa}, None)
            return answer, runner._batcher.queued

        try:
            first = asyncio.create_task(first_then_queued())
            second = asyncio.create_task(runner.infer({"x": xb}, None))
            await until(lambda: runner._batcher.queued == 1, "the second request waits for the instance")
            gate.set()
            (answer, queued), other = await asyncio.gather(first, second)
        finally:
            gate.set()
            busy.result()
            await runner.close()
        return answer, queued, other

    answer, queued, other = run(scenario())
    assert queued == 0, "the first caller resumed before the second request was handed to the instance"
    np.testing.assert_allclose(answer["y"], tiny.reference({"x": xa})["y"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(other["y"], tiny.reference({"x": xb})["y"], atol=1e-5, rtol=0)


def test_a_runner_describes_what_serves_it_and_refuses_requests_before_it_starts(tiny: TinyModels):
    async def scenario() -> None:
        config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}])
        runner = ModelRunner(config, REGISTRY, Metrics())
        with pytest.raises(RuntimeError, match="^runner not started$"):
            await runner.infer({"x": rows(1, 0)}, None)
        await runner.start()
        try:
            assert runner.platform() == "onnxruntime_onnx"
            backend = runner.metadata()["backend"]
            assert (backend["name"], backend["entry"], backend["chain_position"]) == ("onnxruntime", "onnxruntime", 0)
        finally:
            await runner.close()

    run(scenario())


def test_lifespan_shutdown_drains_queue_and_closes_every_backend(tiny: TinyModels, tmp_path_factory):
    """Leaving the app's lifespan (server shutdown) runs the data plane's close: requests still
    queued are answered with their own rows before it returns, and both instances' onnxruntime
    sessions are dropped and freed."""
    config = parse_config({"server": {"model_roots": [str(tmp_path_factory.getbasetemp())]}, "models": [
        {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}], "instances": 2,
         "batching": {"max_batch_size": 64, "max_queue_delay_ms": 1000, "adaptive_delay": False}}]},
        "test", REGISTRY)
    xs = [rows(n, 10 + n) for n in (1, 2, 3)]

    async def ask(plane, x):
        with plane.call("tiny") as call:
            return await call.infer({"x": x})

    async def scenario():
        app = create_app(config, REGISTRY)
        plane = app.state.dataplane
        async with app.router.lifespan_context(app):
            runner = plane.repository.runners()[0]
            backends = [pipeline.backend for pipeline in runner._pipelines]
            sessions = [weakref.ref(backend._session) for backend in backends]
            tasks = [asyncio.create_task(ask(plane, x)) for x in xs]
            await until(lambda: len(runner._waiting) == len(xs), "every request is queued")
            assert not any(task.done() for task in tasks)
        # The lifespan has returned: the drain is over, not merely begun.
        assert all(task.done() for task in tasks)
        return [task.result() for task in tasks], backends, sessions, plane

    answers, backends, sessions, plane = run(scenario())
    for x, answer in zip(xs, answers):
        np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
    assert len(backends) == 2
    assert all(backend._session is None for backend in backends)
    gc.collect()
    assert [ref() for ref in sessions] == [None, None], "an onnxruntime session outlived shutdown"
    assert plane.repository.runners() == [] and plane.shutting_down



class ThreadRecordingOnnxRuntime(OnnxRuntimeBackend):
    """The real onnxruntime backend, noting which thread ran each call."""

    name = "onnxruntime"
    threads: list[str] = []

    def run(self, inputs):
        self.threads.append(threading.current_thread().name)
        return super().run(inputs)


def calls_threads(tiny: TinyModels, batching: dict, failover: dict | None = None, calls: int = 6) -> list[str]:
    ThreadRecordingOnnxRuntime.threads = []
    registry = BackendRegistry(available={"onnxruntime": ThreadRecordingOnnxRuntime})
    extra = {"failover": failover} if failover else {}
    config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}],
                         batching=batching, **extra)

    async def scenario() -> None:
        runner = ModelRunner(config, registry, Metrics())
        await runner.start()
        try:
            for seed in range(calls):
                x = rows(2, seed)
                answer = await runner.infer({"x": x}, None)
                np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
        finally:
            await runner.close()

    run(scenario())
    return ThreadRecordingOnnxRuntime.threads


def test_a_fast_call_moves_onto_the_event_loop_thread_after_its_first_measured_run(tiny: TinyModels):
    threads = calls_threads(tiny, {"max_batch_size": 1, "inline_max_us": 100_000})
    assert threads[0].startswith("hotswap-tiny-"), "the first call is measured on the instance's thread"
    assert threads[1:] == ["MainThread"] * 5


def test_a_call_slower_than_inline_max_stays_on_the_instance_thread(tiny: TinyModels):
    threads = calls_threads(tiny, {"max_batch_size": 1, "inline_max_us": 0})
    assert len(threads) == 6 and all(name.startswith("hotswap-tiny-") for name in threads)


def test_a_failover_batch_timeout_keeps_calls_on_the_abandonable_thread(tiny: TinyModels):
    threads = calls_threads(tiny, {"max_batch_size": 1, "inline_max_us": 100_000}, {"batch_timeout_ms": 10_000})
    assert len(threads) == 6 and all(name.startswith("hotswap-tiny-") for name in threads)


def test_backends_not_declared_inline_safe_never_run_inline(tiny: TinyModels):
    ThreadRecordingOnnxRuntime.inline_safe = False
    try:
        threads = calls_threads(tiny, {"max_batch_size": 1, "inline_max_us": 100_000})
    finally:
        del ThreadRecordingOnnxRuntime.inline_safe
    assert len(threads) == 6 and all(name.startswith("hotswap-tiny-") for name in threads)


def test_a_closed_runner_refuses_requests_as_not_ready(tiny: TinyModels):
    async def scenario() -> None:
        config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}])
        runner = ModelRunner(config, REGISTRY, Metrics())
        await runner.start()
        await runner.close()
        try:
            await runner.infer({"x": rows(1, 0)}, None)
        except ModelNotReady as exc:
            assert str(exc) == "model 'tiny' on onnxruntime was unloaded; retry"
        else:
            raise AssertionError("a closed runner answered")

    run(scenario())


class HangingOnnxRuntime(OnnxRuntimeBackend):
    """The real onnxruntime backend whose calls, once `hang` is set, block until `release` (a lost device)."""

    name = "onnxruntime"
    hang = threading.Event()
    release = threading.Event()

    def run(self, inputs):
        if self.hang.is_set():
            self.release.wait(10)
        return super().run(inputs)


def test_a_hung_batch_fails_at_the_batch_timeout_and_its_instance_takes_no_more(tiny: TinyModels):
    registry = BackendRegistry(available={"onnxruntime": HangingOnnxRuntime})
    config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}],
                         batching={"max_batch_size": 1}, failover={"batch_timeout_ms": 600})  # 600: a unit slip shows
    HangingOnnxRuntime.hang.clear()
    HangingOnnxRuntime.release.clear()

    async def scenario() -> tuple[str, str]:
        runner = ModelRunner(config, registry, Metrics())
        await runner.start()
        HangingOnnxRuntime.hang.set()
        try:
            with pytest.raises(BatchHung) as hung:
                await runner.infer({"x": rows(1, 0)}, None)
            # the instance's thread is still inside the hung call: the next batch is refused at once
            with pytest.raises(BatchHung) as refused:
                await runner.infer({"x": rows(1, 1)}, None)
            await runner.close(0)  # without waiting for the thread still hung
        finally:
            HangingOnnxRuntime.release.set()
        return str(hung.value), str(refused.value)

    hung, refused = run(scenario())
    assert hung == "backend 'onnxruntime' did not finish a batch within failover.batch_timeout_ms=600"
    assert refused == "instance 0 of 'onnxruntime' is abandoned: an earlier batch hung"
