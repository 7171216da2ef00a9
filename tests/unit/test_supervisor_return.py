"""The failover supervisor's return to the preferred entry, in-process on real onnxruntime sessions:
the preferred entry is probed in the background and taken back only when it loads and agrees (a
probe that fails says why and changes nothing), never during a switch nor for a runner that changed
meanwhile, and the entry left becomes the standby. Over HTTP with the fault plugin:
tests/api/test_failover.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from hotswap.serve.metrics import Metrics
from tests.unit import supervisor_support as support
from tests.unit.supervisor_support import Late, Mendable, X, supervisor, until

registry = support.registry  # the backends' registry, and every test's mended backends
mended = support.mended


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
