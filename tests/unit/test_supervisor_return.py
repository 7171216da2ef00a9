"""The failover supervisor in-process on real onnxruntime sessions: a warm standby takes over at
once, the preferred entry is probed in the background and taken back only when it loads and agrees
(a probe that fails says why), and a standby that cannot load leaves the model on its one runner.
The preferred entry is the tiny network on a backend the test can break and mend (`Mendable`);
over HTTP with the fault plugin: tests/api/test_failover.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.errors import BackendError, BackendUnavailable
from hotswap.models.signature import Tensors
from hotswap.serve.metrics import Metrics
from hotswap.serve.supervisor import ModelSupervisor

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


class Mendable(OnnxRuntimeBackend):
    """onnxruntime whose calls fail while `broken`, whose loads fail while `unloadable`, and whose
    answers are off by `skew` (a preferred entry that loads but disagrees)."""

    name = "mendable"
    broken = threading.Event()
    unloadable = threading.Event()
    gate: threading.Semaphore | None = None  # when set by a test: each call takes one permit
    entered = threading.Event()
    skew = 0.0
    calls = 0
    loads = 0

    load_gate: threading.Event | None = None  # when set by a test: each load waits for it

    def _load(self, artifact, options, declared):
        Mendable.loads += 1
        if Mendable.unloadable.is_set():
            raise BackendUnavailable("the device is still gone")
        if Mendable.load_gate is not None:
            Mendable.load_gate.wait(10)
        return super()._load(artifact, options, declared)

    def run(self, inputs: Tensors) -> Tensors:
        Mendable.calls += 1
        Mendable.entered.set()
        if Mendable.gate is not None:
            Mendable.gate.acquire(timeout=10)
        if Mendable.broken.is_set():
            raise BackendError("device lost")
        return {k: v + np.float32(Mendable.skew) for k, v in super().run(inputs).items()}


class Unloadable(OnnxRuntimeBackend):
    name = "unloadable"
    attempts = 0

    def _load(self, artifact, options, declared):
        Unloadable.attempts += 1
        raise BackendUnavailable("no such device")


class Late(OnnxRuntimeBackend):
    """onnxruntime that cannot load until `loadable` is set (a device that comes up after start-up)."""

    name = "late"
    loadable = threading.Event()
    close_gate: threading.Event | None = None  # when set by a test: closing waits for it
    closed = 0

    def _load(self, artifact, options, declared):
        if not Late.loadable.is_set():
            raise BackendUnavailable("not up yet")
        return super()._load(artifact, options, declared)

    def close(self) -> None:
        if Late.close_gate is not None:
            Late.close_gate.wait(10)
        Late.closed += 1
        super().close()


@pytest.fixture(autouse=True)
def mended():
    Mendable.broken.clear()
    Mendable.unloadable.clear()
    Mendable.skew, Mendable.calls, Mendable.loads, Mendable.gate, Mendable.load_gate = 0.0, 0, 0, None, None
    Mendable.entered.clear()
    Unloadable.attempts = 0
    Late.loadable.clear()
    Late.close_gate, Late.closed = None, 0
    yield
    Mendable.broken.clear()
    Mendable.unloadable.clear()


@pytest.fixture(scope="module")
def registry() -> BackendRegistry:
    found = discover_backends()
    return BackendRegistry(available={**found.available, "mendable": Mendable, "unloadable": Unloadable, "late": Late},
                           failed=dict(found.failed), distributions=dict(found.distributions))


def supervisor(tiny, registry, backends: list[str], batching: dict | None = None, metrics: Metrics | None = None,
               **failover) -> ModelSupervisor:
    model = {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": b} for b in backends],
             "failover": {"after_errors": 1, **failover}, "batching": batching or {}}
    config = parse_config({"server": {"model_roots": [str(tiny.onnx.parent)]}, "models": [model]}, "test", registry)
    return ModelSupervisor(config.models[0], registry, metrics or Metrics(), drain_timeout_s=5)


async def until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_warm_standby_serves_at_once_and_the_mended_preferred_entry_is_taken_back(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], standby=True, retry_primary_after_s=0.05)
    want = tiny.reference({"x": X})

    async def go():
        await sup.start()
        await until(lambda: sup.standby is not None, "the standby to load")
        assert (sup.active.selected.label, sup.standby.selected.label) == ("mendable", "onnxruntime")
        await sup.infer({"x": X}, 10.0)  # a batch to warm the next standby with and to probe on
        Mendable.broken.set()
        out = await sup.infer({"x": X}, 10.0)  # fails on mendable, retried on the standby
        np.testing.assert_allclose(out["y"], want["y"], rtol=0, atol=1e-5)
        assert sup.active.selected.label == "onnxruntime" and sup.log.state == "failed_over"
        Mendable.unloadable.set()  # the probe cannot load it yet: it says so and keeps trying
        await until(lambda: sup.log.last_probe is not None, "a failed probe")
        assert sup.log.last_probe["backend"] == "mendable"
        assert "the device is still gone" in sup.log.last_probe["result"]
        Mendable.unloadable.clear()
        Mendable.broken.clear()
        await until(lambda: sup.active.selected.label == "mendable", "the return to the preferred entry")
        assert sup.log.state == "serving" and sup.log.reason == "preferred_recovered"
        assert sup.standby is not None and sup.standby.selected.label == "onnxruntime"  # kept warm
        # the switches' background tasks (standby load, retiring runner, probe) are dropped once done
        await until(lambda: not sup._tasks, "the finished background tasks to be dropped")
        history = [(h["from"], h["to"], h["reason"]) for h in sup.log.history]
        meta = sup.metadata()["failover"]
        out = await sup.infer({"x": X}, 10.0)
        await sup.close(1)
        return history, meta, out

    history, meta, out = asyncio.run(go())
    assert history == [("mendable", "onnxruntime", "errors"), ("onnxruntime", "mendable", "preferred_recovered")]
    assert (meta["preferred_position"], meta["standby"], meta["consecutive_errors"]) == (0, "onnxruntime", 0)
    np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)


def test_without_a_standby_the_entry_left_for_the_recovered_one_is_retired(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], retry_primary_after_s=0.05)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)  # a batch to probe on
        Mendable.broken.set()
        await sup.infer({"x": X}, 10.0)  # fails over
        assert sup.active.selected.label == "onnxruntime"
        Mendable.broken.clear()
        await until(lambda: sup.active.selected.label == "mendable", "the return to the preferred entry")
        await until(lambda: not sup._tasks, "the retiring runner's close")
        left = (sup.standby, [r.selected.label for r in sup.runners()])
        await sup.close(1)
        return left

    standby, runners = asyncio.run(go())
    assert standby is None and runners == ["mendable"]


def test_a_preferred_entry_that_disagrees_is_not_taken_back(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], retry_primary_after_s=0.05, parity_atol=1e-3)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        await sup.infer({"x": X}, 10.0)
        assert sup.active.selected.label == "onnxruntime" and sup.standby is None
        Mendable.skew = 0.5  # it loads again, but answers 0.5 off
        Mendable.broken.clear()
        await until(lambda: sup.log.last_probe is not None, "a probe")
        probe = dict(sup.log.last_probe)
        label = sup.active.selected.label
        await sup.close(1)
        return probe, label

    probe, label = asyncio.run(go())
    assert label == "onnxruntime" and probe["backend"] == "mendable"
    assert probe["result"].startswith("parity: max abs error 0.5")
    assert "(parity_atol 0.001), min cosine " in probe["result"]
    assert probe["result"].endswith("(parity_min_cosine 0.999)")


def test_the_standby_is_warmed_with_the_latest_batch(tiny, registry):
    sup = supervisor(tiny, registry, ["onnxruntime", "mendable"], standby=True, retry_primary_after_s=60)

    async def go():
        await sup.start()
        await until(lambda: sup.standby is not None, "the first standby")
        first_calls = Mendable.calls  # nothing to warm it with before any request
        await sup.infer({"x": X}, 10.0)
        spare, sup.standby = sup.standby, None
        await spare.close(0)
        await sup._load_standby()  # as after a switch: loaded, then warmed with the latest batch
        calls = Mendable.calls
        await sup.close(1)
        return first_calls, calls

    assert asyncio.run(go()) == (0, 1)


def test_a_standby_is_loaded_only_while_there_is_none_and_a_model_is_served(tiny, registry):
    sup = supervisor(tiny, registry, ["onnxruntime", "mendable"], standby=True, retry_primary_after_s=60)

    async def go():
        await sup.start()
        await until(lambda: sup.standby is not None, "the standby")
        standby, loads = sup.standby, Mendable.loads
        await sup._load_standby()  # one is warm already: nothing to do
        again = (sup.standby is standby, Mendable.loads - loads)
        await sup.close(1)
        await sup._load_standby()  # closed: no active runner, nothing to stand by for
        return again, sup.standby, Mendable.loads - loads

    again, after_close, loads = asyncio.run(go())
    assert again == (True, 0) and after_close is None and loads == 0


def test_a_standby_loaded_while_the_serving_runner_changed_is_dropped(tiny, registry):
    sup = supervisor(tiny, registry, ["onnxruntime", "mendable"], retry_primary_after_s=60)

    async def go():
        await sup.start()
        Mendable.load_gate = threading.Event()
        loading = asyncio.create_task(sup._load_standby())
        await until(lambda: Mendable.loads == 1, "the standby's load to start")
        serving = sup.active
        sup.active = sup._runner(0)  # a switch replaced the runner the standby was meant for
        Mendable.load_gate.set()
        await loading
        dropped = sup.standby
        sup.active = serving
        await sup.close(1)
        return dropped

    assert asyncio.run(go()) is None


def test_the_preferred_entry_is_not_probed_while_a_switch_is_under_way(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], retry_primary_after_s=0.01)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        Mendable.unloadable.set()  # every probe fails to load it, and counts a load
        await sup.infer({"x": X}, 10.0)  # fails over; the probe loop starts
        await until(lambda: Mendable.loads >= 3, "probes")
        sup._switching = asyncio.get_running_loop().create_future()  # a switch under way
        await asyncio.sleep(0.1)  # a probe already loading finishes
        loads = Mendable.loads
        await asyncio.sleep(0.2)  # twenty probe intervals
        during = Mendable.loads - loads
        sup._switching = None
        await until(lambda: Mendable.loads > loads, "the probes to go on after the switch")
        await sup.close(1)
        return during

    assert asyncio.run(go()) == 0


def test_the_probe_takes_back_the_entry_that_served_first_not_an_earlier_one(tiny, registry):
    """The chain starts on its second entry (the first cannot load yet); after a failover, the probe
    tries that entry again, not the first one, which has come up meanwhile."""
    sup = supervisor(tiny, registry, ["late", "mendable", "onnxruntime"], retry_primary_after_s=0.02)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        await sup.infer({"x": X}, 10.0)  # fails over to onnxruntime
        Late.loadable.set()
        Mendable.broken.clear()
        await until(lambda: sup.active.selected.label != "onnxruntime", "the return")
        back = (sup.active.selected.label, sup.active.selected.position, sup.preferred_position)
        await sup.close(1)
        return back

    assert asyncio.run(go()) == ("mendable", 1, 1)


def test_on_the_return_the_entry_left_becomes_the_standby_and_the_old_standby_is_retired(tiny, registry):
    """Chain mendable, onnxruntime, late, with a standby: a failover promotes onnxruntime and loads late
    as the standby. A probe that cannot load mendable says why and changes nothing; the return makes
    onnxruntime the standby and retires late, and a close right then waits for that retirement."""
    Late.loadable.set()
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime", "late"], standby=True, retry_primary_after_s=0.02)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        Mendable.unloadable.set()
        await sup.infer({"x": X}, 10.0)
        await until(lambda: sup.standby is not None and sup.standby.selected.label == "late", "late as the standby")
        await until(lambda: sup.log.last_probe is not None, "a failed probe")
        failed_probe = (sup.log.last_probe["result"], sup.active.selected.label, len(sup.log.history))
        Late.close_gate = threading.Event()  # the retirement of late will wait
        Mendable.unloadable.clear()
        Mendable.broken.clear()
        await until(lambda: sup.active.selected.label == "mendable", "the return")
        standby = sup.standby.selected.label
        threading.Timer(0.3, Late.close_gate.set).start()
        await sup.close(1)  # the retiring runner is left to finish its close, and waited for
        return failed_probe, standby, Late.closed, [h["to"] for h in sup.log.history]

    failed_probe, standby, late_closed, switches = asyncio.run(go())
    assert failed_probe == ("BackendUnavailable: model 'tiny': no backend in its chain could load:\n"
                            "  #0 mendable: the device is still gone", "onnxruntime", 1)
    assert standby == "onnxruntime" and switches == ["onnxruntime", "mendable"]
    assert late_closed == 1, "the old standby's close was cut short by the supervisor's close"


def test_a_probe_does_not_switch_when_the_serving_runner_changed_meanwhile(tiny, registry):
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], retry_primary_after_s=0.01)

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        await sup.infer({"x": X}, 10.0)  # fails over; the probe loop starts
        Mendable.broken.clear()
        Mendable.load_gate = threading.Event()
        loads = Mendable.loads
        await until(lambda: Mendable.loads > loads, "a probe's load")
        serving = sup.active
        replaced = sup._runner(1)
        await replaced.start(publish=False)
        sup.active = replaced  # as another switch would, while the probe loads
        Mendable.unloadable.set()  # the probes after this one fail to load
        Mendable.load_gate.set()
        await until(lambda: sup.log.last_probe is not None, "the probe's outcome")
        kept = sup.active is replaced
        sup.active = serving
        await replaced.close(0)
        await sup.close(1)
        return kept, [h["to"] for h in sup.log.history]

    assert asyncio.run(go()) == (True, ["onnxruntime"])


def test_a_probe_leaves_the_serving_entry_published_while_it_runs_and_after_it_failed(tiny, registry):
    metrics = Metrics()
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], metrics=metrics, retry_primary_after_s=0.02,
                     parity_atol=1e-3)

    def selected() -> dict[str, float]:
        return {s.labels["position"]: s.value for family in metrics.registry.collect()
                if family.name == "hotswap_backend_selected" for s in family.samples}

    async def go():
        await sup.start()
        await sup.infer({"x": X}, 10.0)
        Mendable.broken.set()
        await sup.infer({"x": X}, 10.0)
        before = selected()
        Mendable.skew = 0.5
        Mendable.entered.clear()
        Mendable.gate = threading.Semaphore(0)  # the probe's first batch on mendable waits
        Mendable.broken.clear()
        assert await asyncio.to_thread(Mendable.entered.wait, 10)
        during = selected()
        Mendable.gate.release(100)
        await until(lambda: sup.log.last_probe is not None, "a probe")
        after = selected()
        await sup.close(1)
        return before, during, after

    before, during, after = asyncio.run(go())
    assert before == during == after == {"0": 0.0, "1": 1.0}


def test_a_warm_standby_is_not_reported_as_serving(tiny, registry):
    metrics = Metrics()
    sup = supervisor(tiny, registry, ["onnxruntime", "mendable"], metrics=metrics, standby=True,
                     retry_primary_after_s=60)

    def selected() -> dict[str, float]:
        return {s.labels["position"]: s.value for family in metrics.registry.collect()
                if family.name == "hotswap_backend_selected" for s in family.samples}

    async def go():
        await sup.start()
        await until(lambda: sup.standby is not None, "the standby")
        meta, chosen = sup.metadata()["failover"], selected()
        await sup.close(1)
        return chosen, meta

    chosen, meta = asyncio.run(go())
    assert chosen == {"0": 1.0}  # the standby (position 1) is loaded, but not what serves
    assert meta["standby"] == "mendable"
    assert meta["config"] == sup.policy.model_dump() and meta["config"]["retry_primary_after_s"] == 60


def test_a_standby_that_cannot_load_leaves_one_runner(tiny, registry):
    sup = supervisor(tiny, registry, ["onnxruntime", "unloadable"], standby=True)

    async def go():
        await sup.start()
        await asyncio.sleep(0.05)
        runners = [r.selected.label for r in sup.runners()]
        meta = sup.metadata()["failover"]
        await sup.close(1)
        return runners, meta

    runners, meta = asyncio.run(go())
    assert runners == ["onnxruntime"] and meta["standby"] is None


def test_requests_queued_on_a_faulty_backend_are_answered_by_the_next_entry(tiny, registry):
    """One batch runs (and will fail) while three requests wait behind it: on the switch the waiting
    ones move to the new runner instead of failing with the faulty one."""
    sup = supervisor(tiny, registry, ["mendable", "onnxruntime"], batching={"max_batch_size": 1,
                     "max_queue_delay_ms": 0, "inline_max_us": 0}, retry=False)
    want = tiny.reference({"x": X})["y"]

    async def go():
        await sup.start()
        Mendable.broken.set()
        Mendable.gate = threading.Semaphore(0)
        first = asyncio.create_task(sup.infer({"x": X}, 10.0))
        assert await asyncio.to_thread(Mendable.entered.wait, 10)
        waiting = [asyncio.create_task(sup.infer({"x": X}, 10.0)) for _ in range(3)]
        await asyncio.sleep(0.05)  # queued behind the running batch
        Mendable.gate.release()  # the first batch fails; the next one starts and waits for a permit
        await until(lambda: sup.active.selected.label == "onnxruntime", "the switch")
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        Mendable.gate.release(3)  # let the abandoned call on the old runner return
        label, state = sup.active.selected.label, sup.log.state
        await sup.close(1)
        return results, label, state

    results, label, state = asyncio.run(go())
    assert (label, state) == ("onnxruntime", "failed_over")
    assert isinstance(results[0], BackendError)  # retry off: the failed batch's own request fails
    for out in results[1:]:
        np.testing.assert_allclose(out["y"], want, rtol=0, atol=1e-5)


def test_with_no_later_entry_that_loads_the_faulty_backend_keeps_serving_degraded(tiny, registry, caplog):
    sup = supervisor(tiny, registry, ["mendable", "unloadable"])

    async def go():
        await sup.start()
        Mendable.broken.set()
        with pytest.raises(BackendError):
            await sup.infer({"x": X}, 10.0)
        await until(lambda: sup.log.state == "degraded", "the switch to give up")
        calls, attempts = Mendable.calls, Unloadable.attempts
        for _ in range(3):
            with pytest.raises(BackendError):  # degraded: no retries on it any more
                await sup.infer({"x": X}, 10.0)
        await asyncio.sleep(0.05)
        retried, walked = Mendable.calls - calls, Unloadable.attempts - attempts
        Mendable.broken.clear()
        out = await sup.infer({"x": X}, 10.0)
        summary = sup.log.summary()
        await sup.close(1)
        return retried, walked, out, summary

    retried, walked, out, summary = asyncio.run(go())
    assert retried == 3 and summary["reason"] == "errors; no later chain entry loads"
    assert walked == 0, "a degraded runner's failures do not walk the chain again"
    assert "model tiny: mendable is faulty (errors) and no later chain entry loads; it keeps serving" in caplog.text
    np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
