"""The model repository with a generating model, in-process: the tiny random Llama folder
(tests/conftest.py `tiny_llm`) through load, reload, a failed reload
and unload, with a generation running across the reload.

Pinned by `make mutate`: `ModelRepository._load_generator` was reached only by tests/generate, which
the mutation run does not select (docs/TESTING.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.errors import ConfigError
from hotswap.generate.options import SamplingParams
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository

TOKENS = 200  # a generation long enough to still run while the reload or unload starts


@pytest.fixture(scope="module")
def registry() -> BackendRegistry:
    return discover_backends()


def _repository(tiny_llm: Path, registry: BackendRegistry, metrics: Metrics) -> ModelRepository:
    """`gen` names its folder relative to the config's folder, as a config file next to it would."""
    model = {"name": "gen", "source": tiny_llm.name, "backends": [{"name": "torch", "device": "cpu"}],
             "generation": {"max_kv_tokens": 4096}}
    config = parse_config({"server": {"model_roots": [str(tiny_llm.parent)], "model_control": "explicit",
                                      "graceful_timeout_s": 30},
                           "models": [model]}, "test", registry)
    return ModelRepository(config, registry, metrics, config_dir=tiny_llm.parent)


async def _loaded_and_generating(repo: ModelRepository):
    """Load `gen` and start a generation on it; returns the service and the generation's task once it runs."""
    await repo.load("gen")
    service = repo.ready_generator("gen")
    running = asyncio.create_task(_generate(service))
    while not service.engine.live:
        await asyncio.sleep(0.01)
    return service, running


def _finished_whole(chunks: list) -> None:
    assert chunks[-1].error is None
    assert (chunks[-1].finish, chunks[-1].completion_tokens) == ("length", TOKENS)


async def _generate(service, words: str = "w1 w2 w3") -> list:
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
    return [chunk async for chunk in service.submit(service.prompt_ids(words), params).chunks()]


def test_a_generating_model_loads_from_its_config_folder_and_is_counted(tiny_llm, registry):
    async def go():
        metrics = Metrics()
        repo = _repository(tiny_llm, registry, metrics)
        assert repo.index()[0]["state"] == "UNAVAILABLE"
        loading = asyncio.create_task(repo.load("gen"))
        await asyncio.sleep(0)  # the load runs up to its first thread hop (reading the folder)
        assert repo.index()[0]["state"] == "LOADING"
        await loading
        service = repo.ready_generator("gen")
        assert repo.index() == [{"name": "gen", "version": "1", "state": "READY", "reason": ""}]
        assert repo.slot("gen").config.name == "gen"
        chunks = await _generate(service)
        assert chunks[-1].finish == "length" and chunks[-1].completion_tokens == TOKENS
        loads = [s.value for family in metrics.registry.collect() for s in family.samples
                 if s.name == "hotswap_model_load_seconds" and s.labels["model"] == "gen"]
        assert len(loads) == 1 and loads[0] > 0
        await repo.close()
        assert repo.index() == [{"name": "gen", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
        assert service.engine is None

    asyncio.run(go())


def test_a_reload_replaces_the_service_and_lets_a_running_generation_finish(tiny_llm, registry):
    async def go():
        repo = _repository(tiny_llm, registry, Metrics())
        old, running = await _loaded_and_generating(repo)
        reload = asyncio.create_task(repo.load("gen"))  # closes the old one with the drain deadline
        await asyncio.sleep(0)
        assert repo.index()[0]["state"] == "READY" and repo.ready_generator("gen") is old  # serving meanwhile
        await reload
        chunks = await running
        new = repo.ready_generator("gen")
        assert new is not old and old.engine is None and new.engine is not None
        assert repo.index() == [{"name": "gen", "version": "1", "state": "READY", "reason": ""}]
        await repo.close()
        return chunks

    _finished_whole(asyncio.run(go()))


def test_a_failed_reload_keeps_the_loaded_service_ready(tiny_llm, registry):
    async def go():
        repo = _repository(tiny_llm, registry, Metrics())
        await repo.load("gen")
        before = repo.ready_generator("gen")
        tokenizer = tiny_llm / "tokenizer.json"
        tokenizer.rename(tiny_llm / "tokenizer.away")  # the files went away since the first load
        try:
            with pytest.raises(ConfigError) as info:
                await repo.load("gen")
        finally:
            (tiny_llm / "tokenizer.away").rename(tokenizer)
        assert str(info.value) == f"source: {tokenizer} is missing (a fast tokenizer is needed)"
        assert repo.ready_generator("gen") is before and before.engine is not None
        assert repo.index() == [{"name": "gen", "version": "1", "state": "READY", "reason": ""}]
        assert len(await _generate(before)) >= 1
        await repo.close()

    asyncio.run(go())


def test_an_unload_lets_a_running_generation_finish(tiny_llm, registry):
    async def go():
        repo = _repository(tiny_llm, registry, Metrics())
        service, running = await _loaded_and_generating(repo)
        await repo.unload("gen")
        assert service.engine is None
        assert repo.index() == [{"name": "gen", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
        return await running

    _finished_whole(asyncio.run(go()))


def test_a_generation_call_counts_its_outcome_once(tiny_llm, registry):
    from hotswap.serve.dataplane import DataPlane
    from hotswap.serve.generate_common import GenerationCall

    metrics = Metrics()

    async def go():
        repo = _repository(tiny_llm, registry, metrics)
        await repo.load("gen")
        call = GenerationCall(DataPlane(repo, metrics), "gen", None)
        call.record(None)
        call.record(RuntimeError("a second outcome of the same request"))  # ignored: the first one counts
        await repo.close()

    asyncio.run(go())
    counted = {s.name: s.value for family in metrics.registry.collect() for s in family.samples
               if s.labels.get("model") == "gen" and s.name in ("hotswap_request_success_total",
                                                               "hotswap_request_failure_total")}
    assert counted == {"hotswap_request_success_total": 1.0}
