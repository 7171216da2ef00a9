"""Loading models through the data plane, on the real tiny ONNX model and pinned by mutants (`make mutate`,
docs/TESTING.md): what a load override may change, a failed load keeping a loaded model and leaving an
unloaded one UNAVAILABLE with the reason (a generating one too), LOADING on a first load, READY through a
reload."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.errors import ConfigError, InvalidInput
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository
from tests.unit import mutants_repository_support as support
from tests.unit.mutants_repository_support import GEN, SlowLoad, X, _araises, _plane, _roots_config

registry = support.registry  # the backends' registry, with the gated and failing test backends


def test_a_load_override_may_change_only_backends_batching_and_instances(tiny, registry):
    async def go():
        async with _plane(tiny, registry) as plane:
            await _araises(InvalidInput, "parameters.config: expected a JSON object with model config fields",
                           lambda: plane.load("tiny", ["instances"]))  # type: ignore[arg-type]
            await _araises(InvalidInput, "parameters.config: cannot change name, source at run time; a load may "
                           "change only backends, batching, instances",
                           lambda: plane.load("tiny", {"source": "x.onnx", "name": "y", "instances": 2}))
            with pytest.raises(ConfigError) as info:
                await plane.load("tiny", {"instances": "many"})
            assert str(info.value).startswith("load request: parameters.config.instances: ")
            await plane.load("tiny", {"instances": 2, "batching": {"max_batch_size": 4}})
            runner = plane.call("tiny").runner
            assert runner.config.instances == 2 and runner.config.batching.max_batch_size == 4
            assert runner.config.source == str(tiny.onnx)
            await plane.load("tiny", {})  # no override: the config as it is now
            assert plane.call("tiny").runner.config.instances == 2

    asyncio.run(go())


def test_a_failed_load_keeps_a_loaded_model_and_leaves_an_unloaded_one_unavailable_with_the_reason(tiny, registry):
    async def go():
        async with _plane(tiny, registry) as plane:
            serving = plane.call("tiny").runner
            with pytest.raises(Exception) as info:
                await plane.load("tiny", {"backends": [{"name": "torch"}]})
            assert plane.call("tiny").runner is serving
            assert plane.index()[0] == {"name": "tiny", "version": "1", "state": "READY", "reason": ""}
            out = await plane.call("tiny").infer({"x": X})
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            await plane.unload("tiny")
            with pytest.raises(Exception) as again:
                await plane.load("tiny", {"backends": [{"name": "torch"}]})
            assert str(again.value) == str(info.value)
            assert plane.index()[0] == {"name": "tiny", "version": "1", "state": "UNAVAILABLE",
                                        "reason": str(info.value)}

    asyncio.run(go())


def test_a_first_load_is_loading_and_a_reload_keeps_serving_while_it_loads(tiny, registry):
    async def load_and_look(plane: DataPlane) -> str:
        SlowLoad.entered.clear()
        SlowLoad.opened.clear()
        loading = asyncio.create_task(plane.load("tiny"))
        assert await asyncio.to_thread(SlowLoad.entered.wait, 10)
        state = plane.index()[0]["state"]
        SlowLoad.opened.set()
        await loading
        return state

    async def go():
        async with _plane(tiny, registry, load=False, backends=[{"name": "slowload"}]) as plane:
            states = [await load_and_look(plane), await load_and_look(plane)]
            return states, plane.index()[0]["state"]

    assert asyncio.run(go()) == (["LOADING", "READY"], "READY")


def test_a_generating_model_that_cannot_load_is_unavailable_with_the_reason(tiny, registry, tmp_path):
    """Last in this module: the first generation load imports transformers (seconds)."""
    (tmp_path / "llm").mkdir()
    gen = GEN | {"source": str(tmp_path / "llm")}
    config = _roots_config(tiny, registry, [tmp_path], gen)
    reason = (f"source: {tmp_path / 'llm' / 'config.json'} is missing; a generation source is a Hugging Face "
              "causal-LM folder")

    async def go():
        repo = ModelRepository(config, registry, Metrics())
        for _ in range(2):  # a second failure leaves it as it was
            with pytest.raises(ConfigError) as info:
                await repo.load("gen")
            assert str(info.value) == reason
            assert repo.index() == [{"name": "gen", "version": "1", "state": "UNAVAILABLE", "reason": reason}]
        await repo.close()

    asyncio.run(go())
