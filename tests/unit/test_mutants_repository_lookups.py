"""The model repository and the data plane in-process, on the real tiny ONNX model: every answer read
whole (messages, index entries, states), each test pinned by mutants that survived the rest of the
suite or outlived its first seconds (`make mutate`, docs/TESTING.md). Here: lookups by name, version and
state (a generating model's slot included), the repository API refused without explicit model control,
and close unloading every model. Backends and the plane: mutants_repository_support.py.
"""

from __future__ import annotations

import asyncio

import pytest

from hotswap.config import parse_config
from hotswap.errors import Forbidden, InvalidInput, ModelNotFound, ModelNotReady
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository
from tests.unit import mutants_repository_support as support
from tests.unit.mutants_repository_support import GEN, _araises, _plane, _samples

registry = support.registry  # the backends' registry, with the gated and failing test backends


def _raises(kind, message: str, call) -> None:
    with pytest.raises(kind) as info:
        call()
    assert str(info.value) == message


def test_lookups_name_the_model_the_version_and_the_state(tiny, registry):
    async def go():
        async with _plane(tiny, registry) as plane:
            repo = plane.repository
            assert plane.ready() is True and plane.shutting_down is False
            _raises(ModelNotFound, "unknown model 'nope'; models: tiny, other", lambda: plane.call("nope"))
            _raises(ModelNotFound, "model 'tiny' has no version '7'; versions: 1", lambda: plane.call("tiny", "7"))
            assert plane.call("tiny", "1").version == "1"
            plane.model_ready("tiny", "1")
            assert plane.model_metadata("tiny")["name"] == "tiny"
            await plane.unload("tiny")
            assert plane.ready() is False
            _raises(ModelNotReady, "model 'tiny' is not ready (state UNAVAILABLE): unloaded",
                    lambda: plane.model_ready("tiny"))
            assert plane.index() == [{"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
                                     {"name": "other", "version": "1", "state": "READY", "reason": ""}]
            assert [r.config.name for r in repo.runners()] == ["other"]
            await plane.load("tiny")
            assert plane.ready() is True
            assert plane.index()[0] == {"name": "tiny", "version": "1", "state": "READY", "reason": ""}
            plane.shutting_down = True
            assert plane.ready() is False

    asyncio.run(go())


def test_a_model_never_loaded_is_unavailable_without_a_reason(tiny, registry):
    async def go():
        async with _plane(tiny, registry, load=False) as plane:
            assert plane.ready() is False
            _raises(ModelNotReady, "model 'tiny' is not ready (state UNAVAILABLE)", lambda: plane.call("tiny"))
            assert plane.index()[0] == {"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": ""}

    asyncio.run(go())


def test_the_repository_api_is_forbidden_without_explicit_model_control(tiny, registry):
    message = ("the repository API is switched off (server.model_control: none); set server.model_control: "
               "explicit to load and unload models at run time")

    async def go():
        async with _plane(tiny, registry, control="none") as plane:
            await _araises(Forbidden, message, lambda: plane.load("tiny"))
            await _araises(Forbidden, message, lambda: plane.unload("tiny"))
            assert plane.ready() is True
        async with _plane(tiny, registry) as plane:
            await _araises(ModelNotFound, "unknown model 'nope'; models: tiny, other", lambda: plane.unload("nope"))

    asyncio.run(go())


def test_a_generating_model_is_looked_up_as_one_without_loading_it(tiny, registry):
    """A `generation:` model's slot answers lookups before (and without) its weights being loaded."""
    async def go():
        async with _plane(tiny, registry, load=False, extra=[GEN]) as plane:
            repo = plane.repository
            not_ready = "model 'gen' is not ready (state UNAVAILABLE)"
            _raises(ModelNotReady, not_ready, lambda: repo.ready_generator("gen"))
            _raises(ModelNotReady, not_ready, lambda: repo.ready_generator("gen", "1"))
            _raises(ModelNotReady, not_ready, lambda: plane.model_ready("gen"))
            _raises(ModelNotReady, not_ready, lambda: plane.model_metadata("gen"))
            no_version = "model 'gen' has no version '7'; versions: 1"
            _raises(ModelNotFound, no_version, lambda: plane.model_ready("gen", "7"))
            _raises(ModelNotFound, no_version, lambda: repo.ready_generator("gen", "7"))
            _raises(ModelNotFound, no_version, lambda: plane.model_metadata("gen", "7"))
            _raises(ModelNotFound, "unknown model 'nope'; models: tiny, other, gen",
                    lambda: repo.ready_generator("nope"))
            _raises(InvalidInput, "model 'gen' generates text: use POST /v2/models/gen/generate[_stream], "
                    "/v1/chat/completions or /v1/completions", lambda: plane.call("gen"))
            for version in (None, "1"):
                _raises(InvalidInput, "model 'tiny' does not generate text (its config has no `generation:` section)",
                        lambda: repo.ready_generator("tiny", version))  # noqa: B023 - called at once
            await plane.unload("gen")
            _raises(ModelNotReady, f"{not_ready}: unloaded", lambda: repo.ready_generator("gen"))

    asyncio.run(go())


def test_metadata_and_readiness_check_the_version_and_close_unloads_everything(tiny, registry):
    no_version = "model 'tiny' has no version '7'; versions: 1"

    async def go():
        async with _plane(tiny, registry) as plane:
            assert plane.model_metadata("tiny", "1")["name"] == "tiny"
            _raises(ModelNotFound, no_version, lambda: plane.model_metadata("tiny", "7"))
            _raises(ModelNotFound, no_version, lambda: plane.model_ready("tiny", "7"))
            selected = _samples(plane, "hotswap_backend_selected")
        return plane, selected

    plane, selected = asyncio.run(go())
    assert list(selected.values()) == [1.0]
    assert plane.shutting_down is True
    assert plane.index() == [{"name": name, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
                             for name in ("tiny", "other")]
    assert list(_samples(plane, "hotswap_backend_selected").values()) == [0.0]  # its runner was closed


def test_a_repository_without_models_says_so(registry):
    config = parse_config({"server": {}, "models": []}, "test", registry)
    repository = ModelRepository(config, registry, Metrics())
    _raises(ModelNotFound, "unknown model 'x'; models: none", lambda: repository.slot("x"))
