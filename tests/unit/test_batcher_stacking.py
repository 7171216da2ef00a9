"""DynamicBatcher stacking and scattering: each caller gets its own rows back, requests are never split
and stack only with requests of the same stack key, a failing batch fails only its own requests, and
the same holds end to end through the real ModelRunner. Recorder and helpers: batcher_support.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.errors import BackendError
from hotswap.serve.batch import Batch, PendingRequest, stack_key
from tests.unit.batcher_support import LONG_DELAY_MS, POISON, Recorder, rows_of, run, start, submit

# -- each caller gets its own rows ------------------------------------------------------------

def test_each_caller_gets_its_own_rows_in_order():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=64, max_queue_delay_ms=50)
        requests = []
        for n in range(1, 6):
            x = (100 * n + np.arange(n * 3, dtype=np.float32)).reshape(n, 3)
            w = np.arange(n, dtype=np.int64) + 1000 * n
            requests.append((x, w, batcher.submit({"x": x, "w": w}, n, None)))
        results = await asyncio.gather(*(r.future for _, _, r in requests))
        assert rec.rows == [15], "all five stack into one batch"
        for (x, w, _), result in zip(requests, results):
            np.testing.assert_array_equal(result["x_out"], x * 2)
            np.testing.assert_array_equal(result["w_out"], w * 2)

    run(body())


def test_requests_are_never_split_and_batches_stay_within_the_limit():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=6, max_queue_delay_ms=20)
        sizes = [1, 2, 3, 4, 5, 6, 2, 1]
        requests = [submit(batcher, rows_of(float(i), rows=n)) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(r.future for r in requests))
        assert all(rows <= 6 for rows in rec.rows), rec.rows
        assert sum(rec.rows) == sum(sizes)
        for i, (n, result) in enumerate(zip(sizes, results)):
            np.testing.assert_array_equal(result["x_out"], np.full((n, 4), 2 * i, np.float32))
        # First fit: [1, 2, 3] fills 6; the 4-row request then takes the later 2-row one.
        assert [[r.rows for r in b] for b in rec.batches][:2] == [[1, 2, 3], [4, 2]]

    run(body())


def test_a_request_larger_than_max_batch_size_runs_alone():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=4, max_queue_delay_ms=20)
        big = submit(batcher, rows_of(3.0, rows=10))
        small = submit(batcher, rows_of(4.0, rows=1))
        big_result, small_result = await asyncio.gather(big.future, small.future)
        assert rec.rows == [10, 1]
        assert big_result["x_out"].shape == (10, 4) and small_result["x_out"].shape == (1, 4)

    run(body())


def test_max_batch_size_one_disables_batching():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=1, max_queue_delay_ms=1_000)
        requests = [submit(batcher, rows_of(i)) for i in range(4)]
        await asyncio.gather(*(r.future for r in requests))
        assert rec.rows == [1, 1, 1, 1]

    run(body())


def test_a_request_cancelled_while_its_batch_runs_does_not_shift_later_rows():
    """The cancelled request's rows were computed: scatter must step over them."""

    async def body():
        rec = Recorder(gated=True)
        batcher = start(rec, max_batch_size=6, max_queue_delay_ms=LONG_DELAY_MS)
        gone = submit(batcher, rows_of(1.0, rows=2))
        kept = [submit(batcher, rows_of(2.0, rows=1)), submit(batcher, rows_of(3.0, rows=3))]
        await rec.started.wait()
        gone.future.cancel()  # its caller went away while the backend computes its rows
        rec.gate.set()
        middle, last = await asyncio.gather(*(r.future for r in kept))
        assert rec.batches == [[gone, *kept]] and rec.rows == [6]
        np.testing.assert_array_equal(middle["x_out"], np.full((1, 4), 4.0, np.float32))
        np.testing.assert_array_equal(last["x_out"], np.full((3, 4), 6.0, np.float32))
        await batcher.drain_and_stop()

    run(body())


def test_batch_stacks_scatters_and_fails_only_live_requests():
    async def body():
        loop = asyncio.get_running_loop()

        def request(value: float, rows: int) -> PendingRequest:
            inputs = rows_of(value, rows)
            return PendingRequest(inputs, rows, stack_key(inputs), loop.create_future())

        alone = request(1.0, 2)
        assert Batch([alone]).inputs()["x"] is alone.inputs["x"], "a lone request is not copied"
        a, b, c = request(1.0, 1), request(2.0, 2), request(3.0, 1)
        batch = Batch([a, b, c])
        assert batch.rows == 4
        np.testing.assert_array_equal(batch.inputs()["x"][:, 0], [1, 2, 2, 3])
        with pytest.raises(BackendError, match="expected 4 rows"):
            batch.scatter({"y": np.zeros((3, 1))})
        assert not any(r.future.done() for r in (a, b, c)), "a bad output answers nobody"
        b.future.cancel()
        batch.scatter({"y": np.arange(4)})
        np.testing.assert_array_equal(a.future.result()["y"], [0])
        np.testing.assert_array_equal(c.future.result()["y"], [3])
        d, e = request(4.0, 1), request(5.0, 1)
        d.future.set_result({})
        Batch([d, e]).fail(RuntimeError("boom"))
        assert d.future.result() == {} and isinstance(e.future.exception(), RuntimeError)

    run(body())


# -- stacking -------------------------------------------------------------------------------

def test_different_stack_keys_are_not_stacked():
    async def body():
        rec = Recorder()
        batcher = start(rec, max_batch_size=16, max_queue_delay_ms=100)
        a = submit(batcher, rows_of(1, width=8))
        b = submit(batcher, rows_of(2, width=3))
        c = submit(batcher, rows_of(3, width=8))
        d = submit(batcher, rows_of(4, width=8, dtype=np.float64))
        e = submit(batcher, rows_of(5, width=3))
        f = batcher.submit({"y": np.zeros((1, 8), np.float32)}, 1, None)
        results = await asyncio.gather(*(r.future for r in (a, b, c, d, e)), f.future)
        assert rec.batches == [[a, c], [b, e], [d], [f]]
        for batch in rec.batches:
            assert len({r.key for r in batch}) == 1
        assert results[1]["x_out"].shape == (1, 3) and results[3]["x_out"].dtype == np.float64

    run(body())


def test_stack_key():
    x8 = {"x": np.zeros((2, 8), np.float32)}
    assert stack_key(x8) == stack_key({"x": np.ones((5, 8), np.float32)}), "the batch dim is free"
    assert stack_key(x8) != stack_key({"x": np.zeros((2, 9), np.float32)})
    assert stack_key(x8) != stack_key({"x": np.zeros((2, 8), np.float16)})
    assert stack_key(x8) != stack_key({"y": np.zeros((2, 8), np.float32)})


# -- failures stay with their batch -------------------------------------------------------

@pytest.mark.parametrize("raise_on_poison", [False, True], ids=["sets-exception", "raises"])
def test_a_failing_batch_fails_only_its_own_requests(raise_on_poison):
    async def body():
        rec = Recorder(raise_on_poison=raise_on_poison)
        batcher = start(rec, max_batch_size=2, max_queue_delay_ms=50)
        requests = [submit(batcher, rows_of(v)) for v in (1.0, POISON, 3.0, 4.0)]
        results = await asyncio.gather(*(r.future for r in requests), return_exceptions=True)
        assert [[r.rows for r in b] for b in rec.batches] == [[1, 1], [1, 1]]
        assert all(isinstance(r, RuntimeError) and "poisoned batch of 2" in str(r) for r in results[:2]), results
        np.testing.assert_array_equal(results[2]["x_out"], np.full((1, 4), 6.0, np.float32))
        np.testing.assert_array_equal(results[3]["x_out"], np.full((1, 4), 8.0, np.float32))
        # The worker survives a failed batch.
        after = submit(batcher, rows_of(5.0))
        np.testing.assert_array_equal((await after.future)["x_out"], np.full((1, 4), 10.0, np.float32))
        await batcher.drain_and_stop()

    run(body())


# -- end to end through the real ModelRunner --------------------------------------------------

def test_model_runner_batches_real_requests(tiny):
    from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
    from hotswap.backends.registry import BackendRegistry
    from hotswap.config import ModelConfig
    from hotswap.serve.metrics import Metrics
    from hotswap.serve.runner import ModelRunner

    config = ModelConfig(name="tiny", source=str(tiny.onnx), backends=[{"name": "onnxruntime"}],
                         batching={"max_batch_size": 8, "max_queue_delay_ms": 50})
    registry = BackendRegistry(available={"onnxruntime": OnnxRuntimeBackend})

    async def body():
        runner = ModelRunner(config, registry, Metrics())
        await runner.start()
        try:
            rng = np.random.default_rng(0)
            inputs = [{"x": rng.standard_normal((n, 8)).astype(np.float32)} for n in (1, 3, 2, 5, 1, 4)]
            results = await asyncio.gather(*(runner.infer(x, None) for x in inputs))
            for x, result in zip(inputs, results):
                ref = tiny.reference(x)
                np.testing.assert_allclose(result["y"], ref["y"], atol=1e-4)
                np.testing.assert_allclose(result["z"], ref["z"], atol=1e-4)
        finally:
            await runner.close()

    run(body())
