"""The lone-request path: `DynamicBatcher.lone_slot` and `ModelRunner` running a request's batch of one
in the caller's own task when it would run alone and at once through the queue anyway.

Batcher cases use the recording run_batch of batcher_support (the worker path must not see a request the
lone path took); runner cases use the real onnxruntime backend on the tiny network.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.config import ModelConfig
from hotswap.errors import BackendError, QueueFull
from hotswap.serve.batch import BatchOutcome
from hotswap.serve.batcher import PROBE_EVERY, DynamicBatcher
from hotswap.serve.metrics import Metrics
from hotswap.serve.runner import ModelRunner
from hotswap.testing import TinyModels
from tests.unit.batcher_support import Recorder, rows_of, run, start, submit, until

ANY = lambda index: True  # noqa: E731
NONE = lambda index: False  # noqa: E731


async def idle(batcher, workers: int = 1) -> None:
    await until(lambda: len(batcher._idle_workers) == workers, "workers waiting for a first request")


def test_an_idle_worker_with_nothing_queued_and_no_delay_is_offered():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_queue_delay_ms=0)
        await idle(batcher)
        assert batcher.lone_slot(ANY) == 0
        assert batcher.lone_slot(NONE) is None, "an instance the caller cannot run inline is never offered"
        await batcher.drain_and_stop()
        assert batcher.lone_slot(ANY) is None, "a draining batcher offers nothing"
        with pytest.raises(QueueFull):
            submit(batcher, rows_of(1))

    run(body())


def test_no_slot_while_requests_are_queued_or_every_worker_is_busy():
    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, workers=2, max_queue_delay_ms=0)
        await idle(batcher, 2)
        first = submit(batcher, rows_of(1))
        assert batcher.lone_slot(ANY) is None, "a queued request goes first: the lone one would overtake it"
        await rec.started.wait()
        await idle(batcher, 1)
        busy = rec.workers[0]
        assert batcher.lone_slot(ANY) == 1 - busy, "only the worker still waiting is offered"
        second = submit(batcher, rows_of(2))
        await until(lambda: len(rec.batches) == 2, "the second worker took the second request")
        assert batcher.lone_slot(ANY) is None, "both workers are busy"
        rec.gate.set()
        await asyncio.gather(first.future, second.future)
        await batcher.drain_and_stop()

    run(body())


def test_a_delay_offers_a_slot_only_once_waiting_stopped_paying_off_and_keeps_probing():
    """With a delay, a lone request may skip the queue only when the batcher would not wait for company
    either; the PROBE_EVERY-th such decision goes through the queue, and that fill does wait. Each probe
    that brings nobody doubles the interval to the next one; one that brings company resets it."""
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=8, max_queue_delay_ms=20)
        await idle(batcher)
        assert batcher.lone_slot(ANY) is None, "a fresh batcher still expects company: it waits"
        waited = 0
        while batcher._wait_payoff >= 0.05:  # fruitless waits, one request at a time, as at concurrency 1
            await submit(batcher, rows_of(waited)).future
            waited += 1
            await idle(batcher)
        assert 10 <= waited <= 20
        decisions = PROBE_EVERY * (1 + 2 + 4)
        probes = await _offers(rec, batcher, decisions)
        assert probes == [PROBE_EVERY - 1, 3 * PROBE_EVERY - 1, 7 * PROBE_EVERY - 1], "16, then 32, then 64 apart"
        # A probe that brings company: the next one comes PROBE_EVERY decisions later again.
        assert await _offers(rec, batcher, 8 * PROBE_EVERY - 1) == []
        slot = batcher.lone_slot(ANY)
        assert slot is None, "the next probe, 128 decisions on"
        first = submit(batcher, rows_of(1))
        await asyncio.sleep(0.005)
        second = submit(batcher, rows_of(2))
        await asyncio.gather(first.future, second.future)
        assert rec.rows[-1] == 2, "the probe waited, and the second request joined it"
        await idle(batcher)
        batcher._wait_payoff = 0.0  # back to skipping (the paid-off wait raised it)
        assert await _offers(rec, batcher, PROBE_EVERY) == [PROBE_EVERY - 1]
        # The grant is spent with its probe: a lone request through the queue after it skips the wait.
        request = submit(batcher, rows_of(3))
        await request.future
        assert rec.dispatched_at[-1] - request.enqueued < 0.019, "the probe's grant outlived it"
        await batcher.drain_and_stop()

    run(body())


async def _offers(rec: Recorder, batcher: DynamicBatcher, count: int) -> list[int]:
    """Ask for a lone slot `count` times, as lone requests one at a time; the indices refused (the
    probes) went through the queue, and each waited the whole delay for company."""
    probes = []
    for i in range(count):
        if batcher.lone_slot(ANY) is None:
            probes.append(i)
            request = submit(batcher, rows_of(100 + i))
            await request.future
            assert rec.dispatched_at[-1] - request.enqueued >= 0.019, "the granted probe did not wait"
            await idle(batcher)
    return probes


def test_adaptive_delay_off_never_skips_the_queue():
    async def body():
        batcher = start(Recorder(), max_queue_delay_ms=1, adaptive_delay=False)
        await idle(batcher)
        batcher._wait_payoff = 0.0  # even a payoff that would skip the wait does not matter here
        assert all(batcher.lone_slot(ANY) is None for _ in range(PROBE_EVERY + 1))
        await batcher.drain_and_stop()

    run(body())


# -- through the real runner ------------------------------------------------------------------

class RecordingOnnxRuntime(OnnxRuntimeBackend):
    """The real onnxruntime backend, noting the task each call ran in; input rows equal to POISON fail."""

    name = "onnxruntime"
    tasks: list[str] = []
    POISON = 1e9
    SHORT = -7.0  # rows equal to SHORT get one output row too few
    SLOW = 7.0  # rows equal to SLOW take SLOW_S longer

    SLOW_S = 0.005

    def run(self, inputs):
        task = asyncio.current_task() if _has_loop() else None
        self.tasks.append(task.get_name() if task is not None else "thread")
        if (inputs["x"] == self.POISON).any():
            raise BackendError("poisoned input")
        if (inputs["x"] == self.SLOW).any():
            time.sleep(self.SLOW_S)
        outputs = super().run(inputs)
        if (inputs["x"] == self.SHORT).any():
            return {name: value[1:] for name, value in outputs.items()}
        return outputs


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def runner_for(tiny: TinyModels, batching: dict, outcomes: list[BatchOutcome]) -> ModelRunner:
    RecordingOnnxRuntime.tasks = []
    registry = BackendRegistry(available={"onnxruntime": RecordingOnnxRuntime})
    config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}], batching=batching)
    return ModelRunner(config, registry, Metrics(), on_batch=lambda runner, outcome: outcomes.append(outcome))


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 8)).astype(np.float32)


def test_fast_lone_requests_run_in_the_callers_task_with_their_metrics(tiny: TinyModels):
    outcomes: list[BatchOutcome] = []

    async def scenario() -> None:
        runner = runner_for(tiny, {"max_queue_delay_ms": 0, "inline_max_us": 100_000}, outcomes)
        await runner.start()
        try:
            for seed in range(4):
                x = rows(seed + 1, seed)
                await idle(runner._batcher)  # as when the next request arrives a little later
                answer = await asyncio.create_task(runner.infer({"x": x}, None), name=f"caller-{seed}")
                np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
                assert answer["y"].shape[0] == seed + 1
            series = runner.series
            assert series.execution_count._value.get() == 4
            assert series.inference_count._value.get() == 1 + 2 + 3 + 4
            list(runner._metrics.registry.collect())  # a scrape: folds the per-request tallies into the children
            queued = runner._metrics.queue_duration.labels(*series._values)
            assert queued._sum.get() < 0.5 and _count(queued) == 4
            assert _count(series.batch_size) == 4 and series.batch_size._sum.get() == 10
            # a lone request has no batch to concatenate: its input time is the pipeline's alone
            assert 0 <= series.compute_input._sum.get() < 0.5 and series.compute_infer._sum.get() > 0
        finally:
            await runner.close()

    run(scenario())
    for seed, outcome in enumerate(outcomes):  # what a shadow or a return probe is offered
        x = rows(seed + 1, seed)
        np.testing.assert_array_equal(outcome.inputs["x"], x)
        np.testing.assert_allclose(outcome.outputs["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
        assert 0 <= outcome.seconds < 5
    # The first call is measured on the instance's thread (through the worker); the rest are lone.
    assert RecordingOnnxRuntime.tasks == ["thread", "caller-1", "caller-2", "caller-3"]
    assert [o.error for o in outcomes] == [None] * 4 and [o.inputs["x"].shape[0] for o in outcomes] == [1, 2, 3, 4]


def test_a_lone_request_that_fails_fails_alone_and_is_reported(tiny: TinyModels):
    outcomes: list[BatchOutcome] = []

    async def scenario() -> None:
        runner = runner_for(tiny, {"max_queue_delay_ms": 0, "inline_max_us": 100_000}, outcomes)
        await runner.start()
        try:
            await runner.infer({"x": rows(1, 0)}, None)
            await idle(runner._batcher)
            poisoned = np.full((1, 8), RecordingOnnxRuntime.POISON, dtype=np.float32)
            with pytest.raises(BackendError, match="poisoned input"):
                await asyncio.create_task(runner.infer({"x": poisoned}, None), name="poisoned")
            x = rows(1, 2)
            await idle(runner._batcher)
            answer = await asyncio.create_task(runner.infer({"x": x}, None), name="after")
            np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
            assert runner.series.execution_count._value.get() == 2, "a failed batch is not an execution"
        finally:
            await runner.close()

    run(scenario())
    assert RecordingOnnxRuntime.tasks == ["thread", "poisoned", "after"]
    assert [type(o.error) for o in outcomes] == [type(None), BackendError, type(None)]
    assert outcomes[1].backend_failed and outcomes[1].outputs is None
    assert outcomes[1].inputs["x"][0, 0] == RecordingOnnxRuntime.POISON and 0 <= outcomes[1].seconds < 5


def test_outputs_with_too_few_rows_fail_the_request_on_either_path_and_are_reported(tiny: TinyModels):
    outcomes: list[BatchOutcome] = []
    short = np.full((2, 8), RecordingOnnxRuntime.SHORT, dtype=np.float32)

    async def scenario() -> None:
        runner = runner_for(tiny, {"max_queue_delay_ms": 0, "inline_max_us": 100_000}, outcomes)
        await runner.start()
        try:
            for name in ("worker", "lone"):  # the first call goes through the worker, the next one not
                await idle(runner._batcher)
                with pytest.raises(BackendError, match=r"output 'y' has shape \[1, 4\]; expected 2 rows"):
                    await asyncio.create_task(runner.infer({"x": short}, None), name=name)
            assert runner.series.execution_count._value.get() == 0
        finally:
            await runner.close()

    run(scenario())
    assert RecordingOnnxRuntime.tasks == ["thread", "lone"]
    for outcome in outcomes:
        assert isinstance(outcome.error, BackendError) and outcome.outputs is None
        np.testing.assert_array_equal(outcome.inputs["x"], short)
        assert 0 <= outcome.seconds < 5


def test_slow_calls_and_waiting_batches_go_through_the_worker(tiny: TinyModels):
    outcomes: list[BatchOutcome] = []
    for batching in ({"max_queue_delay_ms": 0, "inline_max_us": 0},
                     {"max_queue_delay_ms": 1, "adaptive_delay": False, "inline_max_us": 100_000}):
        async def scenario(batching: dict = batching) -> None:
            runner = runner_for(tiny, batching, outcomes)
            await runner.start()
            try:
                for seed in range(3):
                    await idle(runner._batcher)
                    await asyncio.create_task(runner.infer({"x": rows(1, seed)}, None), name="caller")
            finally:
                await runner.close()

        run(scenario())
        assert "caller" not in RecordingOnnxRuntime.tasks, batching


def test_lone_calls_that_grow_slow_go_back_to_the_instance_thread(tiny: TinyModels):
    async def scenario() -> None:
        runner = runner_for(tiny, {"max_queue_delay_ms": 0, "inline_max_us": 2_000}, [])
        await runner.start()
        try:
            slow = np.full((1, 8), RecordingOnnxRuntime.SLOW, dtype=np.float32)
            for seed in range(8):
                await idle(runner._batcher)
                x = rows(1, seed) if seed < 2 else slow
                await asyncio.create_task(runner.infer({"x": x}, None), name=f"caller-{seed}")
        finally:
            await runner.close()

    run(scenario())
    tasks = RecordingOnnxRuntime.tasks
    assert tasks[:4] == ["thread", "caller-1", "caller-2", "caller-3"], tasks
    # 5 ms calls against a 2 ms bound: the running average crosses it within a few lone calls.
    assert tasks[-2:] == ["thread", "thread"], tasks


def _count(histogram) -> float:
    return sum(bucket.get() for bucket in histogram._buckets)
