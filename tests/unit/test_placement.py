"""CPU placement of instance threads (serve/placement.py) with real onnxruntime sessions.

What a placed thread really got is read back from the kernel: its affinity mask and nice value,
by the native thread id each instance's own worker thread reports.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.config import ModelConfig
from hotswap.serve.metrics import Metrics
from hotswap.serve.placement import PLACED_NICE, plan_cores, usable_cores
from hotswap.serve.runner import ModelRunner
from hotswap.testing import TinyModels

REGISTRY = BackendRegistry(available={"onnxruntime": OnnxRuntimeBackend})
CORES = usable_cores()
pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not 1 <= len(CORES) <= 8,
                                reason=f"needs Linux thread affinity and 1..8 usable cores (have {len(CORES)})")


def loaded(tiny: TinyModels, count: int, **options) -> list[OnnxRuntimeBackend]:
    backends = []
    for _ in range(count):
        backend = OnnxRuntimeBackend()
        backend.load(tiny.onnx, OnnxRuntimeBackend.Options(**options))
        backends.append(backend)
    return backends


def test_one_single_threaded_cpu_instance_per_core_is_placed_on_every_core_in_order(tiny: TinyModels):
    assert plan_cores("auto", loaded(tiny, len(CORES), intra_op_threads=1)) == (CORES, "")


@pytest.mark.parametrize(("count", "options", "why"), [
    (len(CORES) + 1, {"intra_op_threads": 1}, f"{len(CORES) + 1} instances for {len(CORES)} cores"),
    (len(CORES), {}, "an instance computes on the runtime's choice of threads, not 1"),
    (len(CORES), {"intra_op_threads": 2}, "an instance computes on 2 threads, not 1"),
    (len(CORES), {"intra_op_threads": 1, "inter_op_threads": 1},
     "an instance computes on the runtime's choice of threads, not 1"),
])
def test_instances_that_do_not_map_one_to_one_onto_cores_are_left_to_the_os(tiny, count, options, why):
    assert plan_cores("auto", loaded(tiny, count, **options)) == ([], why)


def test_off_and_several_worker_processes_leave_placement_to_the_os(tiny: TinyModels, monkeypatch):
    backends = loaded(tiny, len(CORES), intra_op_threads=1)
    assert plan_cores("off", backends) == ([], "cpu_placement is off")
    monkeypatch.setenv("HOTSWAP_CPU_SHARERS", "2")  # what `server.workers: 2` sets in each worker
    assert plan_cores("auto", backends) == ([], "several worker processes share the cores")


def thread_state() -> tuple[int, set[int], int]:
    tid = threading.get_native_id()
    return tid, os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, tid)


async def instance_threads(runner: ModelRunner) -> list[tuple[int, set[int], int]]:
    loop = asyncio.get_running_loop()
    return [await loop.run_in_executor(ex, thread_state) for ex in runner._executors]


@pytest.mark.parametrize("placement", ["auto", "off"])
def test_a_runner_pins_each_instance_thread_to_its_own_core_below_the_event_loop(tiny: TinyModels, placement):
    config = ModelConfig(name="tiny", source=str(tiny.onnx), instances=len(CORES), cpu_placement=placement,
                         backends=[{"name": "onnxruntime", "intra_op_threads": 1}])
    loop_before = thread_state()[1:]

    async def scenario() -> None:
        runner = ModelRunner(config, REGISTRY, Metrics())
        await runner.start()
        try:
            threads = await instance_threads(runner)
            x = np.ones((3, 8), np.float32)
            answers = await asyncio.gather(*(runner.infer({"x": x}, None) for _ in range(2 * len(CORES))))
            for answer in answers:
                np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
            placed = placement == "auto"
            assert runner.pinned_cores == (CORES if placed else [])
            assert runner.metadata()["backend"]["pinned_cores"] == runner.pinned_cores
            assert len({tid for tid, _, _ in threads}) == len(CORES)
            expected = [({core}, PLACED_NICE) for core in CORES] if placed else [(set(CORES), 0)] * len(CORES)
            assert [(mask, nice) for _, mask, nice in threads] == expected
            assert [p.processor.own_core for p in runner._pipelines] == [placed] * len(CORES)
            assert thread_state()[1:] == loop_before  # the event loop's own thread is never touched
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
