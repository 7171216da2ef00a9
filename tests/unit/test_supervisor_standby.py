"""The failover supervisor's warm standby, in-process on real onnxruntime sessions: loaded (and warmed
with the latest batch) only while there is none and a runner serves, dropped when the serving runner
changed while it loaded, not reported as serving, and absent when no later entry loads."""

from __future__ import annotations

import asyncio
import threading

from hotswap.serve.metrics import Metrics
from tests.unit import supervisor_support as support
from tests.unit.supervisor_support import Mendable, X, supervisor, until

registry = support.registry  # the backends' registry, and every test's mended backends
mended = support.mended


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
