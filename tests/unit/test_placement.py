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
# Cores are read in each test, not at import: a test process may run on fewer than the one that
# collected it. Collection itself calls no hotswap code (the mutation runner counts calls per test).
CORES_AT_COLLECTION = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
pytestmark = pytest.mark.skipif(not 1 <= CORES_AT_COLLECTION <= 8,
                                reason=f"needs thread affinity and 1..8 usable cores (have {CORES_AT_COLLECTION})")


def loaded(tiny: TinyModels, count: int, **options) -> list[OnnxRuntimeBackend]:
    backends = []
    for _ in range(count):
        backend = OnnxRuntimeBackend()
        backend.load(tiny.onnx, OnnxRuntimeBackend.Options(**options))
        backends.append(backend)
    return backends


def test_one_single_threaded_cpu_instance_per_core_is_placed_on_every_core_in_order(tiny: TinyModels):
    cores = usable_cores()
    assert plan_cores("auto", loaded(tiny, len(cores), intra_op_threads=1)) == (cores, "")


@pytest.mark.parametrize(("extra", "options", "why"), [
    (1, {"intra_op_threads": 1}, "{instances} instances for {cores} cores"),
    (0, {}, "an instance computes on the runtime's choice of threads, not 1"),
    (0, {"intra_op_threads": 2}, "an instance computes on 2 threads, not 1"),
    (0, {"intra_op_threads": 1, "inter_op_threads": 1},
     "an instance computes on the runtime's choice of threads, not 1"),
])
def test_instances_that_do_not_map_one_to_one_onto_cores_are_left_to_the_os(tiny, extra, options, why):
    cores = len(usable_cores())
    instances = cores + extra
    assert plan_cores("auto", loaded(tiny, instances, **options)) == ([], why.format(instances=instances, cores=cores))


def test_off_and_several_worker_processes_leave_placement_to_the_os(tiny: TinyModels, monkeypatch):
    backends = loaded(tiny, len(usable_cores()), intra_op_threads=1)
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
    cores = usable_cores()
    config = ModelConfig(name="tiny", source=str(tiny.onnx), instances=len(cores), cpu_placement=placement,
                         backends=[{"name": "onnxruntime", "intra_op_threads": 1}])
    loop_before = thread_state()[1:]

    async def scenario() -> None:
        runner = ModelRunner(config, REGISTRY, Metrics())
        await runner.start()
        try:
            threads = await instance_threads(runner)
            x = np.ones((3, 8), np.float32)
            answers = await asyncio.gather(*(runner.infer({"x": x}, None) for _ in range(2 * len(cores))))
            for answer in answers:
                np.testing.assert_allclose(answer["y"], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
            placed = placement == "auto"
            assert runner.pinned_cores == (cores if placed else [])
            assert runner.metadata()["backend"]["pinned_cores"] == runner.pinned_cores
            assert len({tid for tid, _, _ in threads}) == len(cores)
            expected = [({core}, PLACED_NICE) for core in cores] if placed else [(set(cores), 0)] * len(cores)
            assert [(mask, nice) for _, mask, nice in threads] == expected
            assert [p.processor.own_core for p in runner._pipelines] == [placed] * len(cores)
            assert thread_state()[1:] == loop_before  # the event loop's own thread is never touched
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


class ReportedDevice(OnnxRuntimeBackend):
    """onnxruntime on the CPU that reports another device (as a plugin's backend would describe itself)."""

    device: str | None = "cuda:0"

    def describe(self) -> dict[str, str]:
        info = super().describe()
        if self.device is None:
            info.pop("device")
        else:
            info["device"] = self.device
        return info


def test_instances_not_all_on_the_cpu_are_left_to_the_os_naming_their_devices(tiny: TinyModels):
    cpu = loaded(tiny, 1, intra_op_threads=1)[0]
    cuda, unreported = ReportedDevice(), ReportedDevice()
    unreported.device = None
    for backend in (cuda, unreported):
        backend.load(tiny.onnx, OnnxRuntimeBackend.Options(intra_op_threads=1))
    assert plan_cores("auto", [cpu, cuda]) == ([], "the instances run on cpu, cuda:0, not only the CPU")
    assert plan_cores("auto", [unreported]) == ([], "the instances run on an unreported device, not only the CPU")


def test_instances_with_different_thread_counts_are_named_in_the_reason(tiny: TinyModels):
    backends = loaded(tiny, 1, intra_op_threads=1) + loaded(tiny, 1, intra_op_threads=2) + loaded(tiny, 1)
    assert plan_cores("auto", backends) == ([], "an instance computes on 1, 2, the runtime's choice of threads, not 1")


def test_usable_cores_are_the_calling_threads_own_not_the_machines():
    mask = os.sched_getaffinity(0)
    core = max(mask)
    os.sched_setaffinity(0, {core})  # as `taskset` would start a process
    try:
        assert usable_cores() == [core]
    finally:
        os.sched_setaffinity(0, mask)


def test_a_torch_cpu_instance_on_one_thread_is_placed_and_one_on_torchs_own_pool_is_not(tiny: TinyModels):
    import torch

    from hotswap.backends.torch_backend import TorchBackend

    before = torch.get_num_threads()  # torch's pool is process-wide: put it back for the other tests
    try:
        backends = []
        for threads in (1, None):
            backend = TorchBackend()
            backend.load(tiny.exported, TorchBackend.Options(device="cpu", threads=threads))
            backends.append(backend)
    finally:
        torch.set_num_threads(before)
    assert [b.compute_threads() for b in backends] == [1, None]
    assert plan_cores("auto", backends[:1] * len(usable_cores())) == (usable_cores(), "")
    assert plan_cores("auto", backends[1:]) == ([], "an instance computes on the runtime's choice of threads, not 1")
