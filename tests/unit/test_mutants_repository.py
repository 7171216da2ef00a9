"""The model repository and the data plane in-process, on the real tiny ONNX model: every answer read
whole (messages, index entries, states), each test pinned by mutants that survived the rest of the
suite or outlived its first seconds (`make mutate`, docs/TESTING.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.errors import (
    ClientClosed,
    ConfigError,
    Forbidden,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
)
from hotswap.models.signature import Tensors
from hotswap.models.sources import hotswap_home
from hotswap.serve.dataplane import DataPlane, default_timeout_s
from hotswap.serve.disconnect import GONE
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository, model_roots
from hotswap.testing import TinyModels

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


class Gate(OnnxRuntimeBackend):
    """onnxruntime, but each call waits at a gate the test opens: a batch that is still running."""

    name = "gate"
    entered = threading.Event()
    opened = threading.Event()

    def run(self, inputs: Tensors) -> Tensors:
        Gate.entered.set()
        Gate.opened.wait(10)
        return super().run(inputs)


class SlowLoad(OnnxRuntimeBackend):
    """onnxruntime whose load waits at a gate the test opens: a model caught while it loads."""

    name = "slowload"
    entered = threading.Event()
    opened = threading.Event()

    def _load(self, artifact, options, declared):
        SlowLoad.entered.set()
        SlowLoad.opened.wait(10)
        return super()._load(artifact, options, declared)


class Failing(OnnxRuntimeBackend):
    """onnxruntime that loads but fails every call: a device gone bad under failover."""

    name = "failing"

    def run(self, inputs: Tensors) -> Tensors:
        raise RuntimeError("device lost")


@pytest.fixture(scope="module")
def registry() -> BackendRegistry:
    found = discover_backends()
    return BackendRegistry(available={**found.available, "gate": Gate, "slowload": SlowLoad, "failing": Failing},
                           failed=dict(found.failed),
                           distributions=dict(found.distributions))


def _config(tiny: TinyModels, registry: BackendRegistry, control: str = "explicit", server: dict | None = None,
            extra: list[dict] = (), **model):
    models = [{"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]} | model,
              {"name": "other", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]}, *extra]
    section = {"model_control": control, "model_roots": [str(Path(tiny.onnx).parent)]} | (server or {})
    return parse_config({"server": section, "models": models}, "test", registry)


@asynccontextmanager
async def _plane(tiny, registry, control: str = "explicit", load: bool = True, server: dict | None = None,
                 extra: list[dict] = (), **model) -> AsyncIterator[DataPlane]:
    config = _config(tiny, registry, control, server, extra, **model)
    metrics = Metrics()
    plane = DataPlane(ModelRepository(config, registry, metrics), metrics, control, config.server.limits)
    if load:
        await plane.repository.load_all()
    try:
        yield plane
    finally:
        await plane.close()


def _raises(kind, message: str, call) -> None:
    with pytest.raises(kind) as info:
        call()
    assert str(info.value) == message


async def _araises(kind, message: str, call) -> None:
    with pytest.raises(kind) as info:
        await call()
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


def test_the_queue_deadline_default_is_batching_timeout_ms_in_seconds(tiny, registry):
    assert default_timeout_s(_config(tiny, registry, batching={"timeout_ms": 250}).models[0]) == 0.25
    assert default_timeout_s(_config(tiny, registry).models[0]) is None


def test_model_roots_default_to_the_config_folder_and_the_cache(tiny, registry, tmp_path):
    config = _config(tiny, registry)
    assert model_roots(config, None) == [Path(tiny.onnx).parent.resolve()]
    config.server.model_roots = None
    assert model_roots(config, tmp_path) == [tmp_path.resolve(), hotswap_home().resolve()]
    assert model_roots(config, None) == [Path.cwd().resolve(), hotswap_home().resolve()]


def test_a_model_file_outside_the_roots_is_refused_whole(tiny, registry, tmp_path):
    config = _config(tiny, registry)
    config.server.model_roots = [tmp_path]
    with pytest.raises(ConfigError) as info:
        ModelRepository(config, registry, Metrics())
    assert str(info.value) == (
        f"models.0.source: {tiny.onnx} lies outside server.model_roots ({tmp_path.resolve()}); model files are "
        "code, add its folder to server.model_roots if it is trusted")


def _samples(plane: DataPlane, name: str) -> dict[frozenset, float]:
    return {frozenset(s.labels.items()): s.value for family in plane.metrics.registry.collect()
            for s in family.samples if s.name == name and s.labels.get("model") == "tiny"}


def test_each_call_is_counted_once_on_the_runner_that_served_it(tiny, registry):
    async def go():
        async with _plane(tiny, registry) as plane:
            with plane.call("tiny") as call:
                out = await call.infer({"x": X}, 30.0)
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            with pytest.raises(InvalidInput), plane.call("tiny") as call:
                await call.infer({"x": X[:, :3]})
            success = _samples(plane, "hotswap_request_success_total")
            failure = _samples(plane, "hotswap_request_failure_total")
            durations = _samples(plane, "hotswap_request_duration_seconds_count")
            return success, failure, durations

    success, failure, durations = asyncio.run(go())
    assert list(success.values()) == [1.0] and list(durations.values()) == [1.0]
    assert [(dict(k)["reason"], v) for k, v in failure.items()] == [("invalid_input", 1.0)]


def test_at_the_drain_deadline_a_request_still_running_is_answered_503(tiny, registry):
    Gate.entered.clear()
    Gate.opened.clear()

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}]) as plane:
            request = asyncio.create_task(plane.call("tiny").infer({"x": X}))
            assert await asyncio.to_thread(Gate.entered.wait, 10)
            plane.abandon_waiting()
            try:
                with pytest.raises(ShuttingDown) as info:
                    await asyncio.wait_for(request, 5)
            finally:
                Gate.opened.set()
            return str(info.value)

    assert asyncio.run(go()) == "the server is shutting down and could not finish this request in time; retry"


GEN = {"name": "gen", "source": "builtin:smollm2", "backends": [{"name": "torch", "device": "cpu"}], "generation": {}}


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


def test_a_call_applies_the_server_limits(tiny, registry):
    async def go():
        async with _plane(tiny, registry, server={"limits": {"max_rows": 1}}) as plane:
            with pytest.raises(PayloadTooLarge) as info:
                await plane.call("tiny").infer({"x": X})
            return str(info.value)

    assert asyncio.run(go()) == "request has 2 rows; server.limits.max_rows is 1"


def _gated() -> None:
    Gate.entered.clear()
    Gate.opened.clear()


def test_a_call_s_timeout_or_else_the_model_s_default_bounds_its_wait_in_the_queue(tiny, registry):
    """One request holds the only instance; the next waits in the queue and times out there."""
    _gated()

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}], batching={"timeout_ms": 60}) as plane:
            first = asyncio.create_task(plane.call("tiny").infer({"x": X}, 30.0))
            assert await asyncio.to_thread(Gate.entered.wait, 10)
            try:
                errors = []
                for timeout_s in (0.6, None):  # 600 ms: a wrong scale shows in the message (601)
                    with pytest.raises(RequestTimeout) as info:
                        await asyncio.wait_for(plane.call("tiny").infer({"x": X}, timeout_s), 5)
                    errors.append(str(info.value))
            finally:
                Gate.opened.set()
            await first
            return errors

    assert asyncio.run(go()) == ["request timed out after 600 ms in the queue (timeout)",
                                 "request timed out after 60 ms in the queue (timeout)"]


def test_without_a_disconnect_signal_the_call_watches_receive(tiny, registry):
    _gated()

    async def receive():
        return {"type": "http.disconnect"}

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}]) as plane:
            try:
                await asyncio.wait_for(plane.call("tiny").infer({"x": X}, None, {}, receive), 5)
            except ClientClosed as exc:
                return str(exc)
            finally:
                Gate.opened.set()

    assert asyncio.run(go()) == GONE


@pytest.mark.parametrize("replace", ["unload", "reload"])
def test_an_unload_or_a_reload_answers_requests_still_queued_at_the_graceful_timeout(tiny, registry, replace):
    """The running batch finishes and answers; the request queued behind it on the old runner is
    refused at the deadline."""
    _gated()

    async def go():
        async with _plane(tiny, registry, backends=[{"name": "gate"}], server={"graceful_timeout_s": 0.05}) as plane:
            running = asyncio.create_task(plane.call("tiny").infer({"x": X}))
            assert await asyncio.to_thread(Gate.entered.wait, 10)
            queued = asyncio.create_task(plane.call("tiny").infer({"x": X}))
            await asyncio.sleep(0)
            unloading = asyncio.create_task(plane.unload("tiny") if replace == "unload" else
                                            plane.load("tiny", {"backends": [{"name": "onnxruntime"}]}))
            try:
                with pytest.raises(ModelNotReady) as info:
                    await asyncio.wait_for(queued, 5)
            finally:
                Gate.opened.set()
            out = await running
            await unloading
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            return str(info.value)

    assert asyncio.run(go()) == "model is being unloaded"


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


def _roots_config(tiny, registry, roots: list | None, *models: dict):
    config = parse_config({"server": {"model_roots": [str(Path(tiny.onnx).parent)]}, "models": list(models)},
                          "test", registry)
    config.server.model_roots = roots
    return config


def _refused(config, config_dir: Path | None = None) -> str | None:
    try:
        ModelRepository(config, discover_backends(), Metrics(), config_dir)
    except ConfigError as exc:
        return str(exc)
    return None


def test_model_roots_check_relative_builtin_and_hf_sources(tiny, registry, tmp_path):
    folder = Path(tiny.onnx).parent
    relative = {"name": "rel", "source": Path(tiny.onnx).name, "backends": [{"name": "onnxruntime"}]}
    builtin = {"name": "gen", "source": "builtin:smollm2", "backends": [{"name": "torch"}], "generation": {}}
    hf = {"name": "hf", "source": f"hf:{tiny.onnx}", "backends": [{"name": "onnxruntime"}]}
    outside = {"name": "out", "source": str(tmp_path / "x.onnx"), "backends": [{"name": "onnxruntime"}]}
    (tmp_path / "x.onnx").write_bytes(Path(tiny.onnx).read_bytes())
    # Relative sources are read from the config's folder, which is also a default root.
    assert _refused(_roots_config(tiny, registry, None, relative), folder) is None
    assert _refused(_roots_config(tiny, registry, [folder], relative), folder) is None
    assert _refused(_roots_config(tiny, registry, [folder], builtin, hf)) is None
    second = tmp_path / "other-root"
    assert _refused(_roots_config(tiny, registry, [folder, second], builtin, outside)) == (
        f"models.1.source: {tmp_path / 'x.onnx'} lies outside server.model_roots ({folder.resolve()}, "
        f"{second.resolve()}); model files are code, add its folder to server.model_roots if it is trusted")


def test_a_folder_source_has_each_artifact_checked(tiny, registry, tmp_path):
    """A symlinked model file inside a root that points out of it is refused."""
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "model" / "tiny.onnx").symlink_to(tiny.onnx)
    (root / "model" / "notes.txt").symlink_to(tmp_path)
    folder_model = {"name": "folder", "source": str(root / "model"), "backends": [{"name": "onnxruntime"}]}
    message = _refused(_roots_config(tiny, registry, [root], folder_model))
    assert message is not None and message.startswith(f"models.0.source: {root / 'model'} lies outside")
    (root / "model" / "tiny.onnx").unlink()
    assert _refused(_roots_config(tiny, registry, [root], folder_model)) is None


def test_a_relative_source_loads_from_the_config_s_folder(tiny, registry):
    relative = {"name": "rel", "source": Path(tiny.onnx).name, "backends": [{"name": "onnxruntime"}]}
    config = _roots_config(tiny, registry, None, relative)

    async def go():
        repo = ModelRepository(config, registry, Metrics(), Path(tiny.onnx).parent)
        await repo.load_all()
        try:
            return await repo.ready_runner("rel").infer({"x": X}, None)
        finally:
            await repo.close()

    np.testing.assert_allclose(asyncio.run(go())["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)


def test_a_request_that_fails_over_is_counted_on_the_backend_that_answered_it(tiny, registry):
    async def go():
        async with _plane(tiny, registry, backends=[{"name": "failing"}, {"name": "onnxruntime"}],
                          failover={"after_errors": 1}) as plane:
            with plane.call("tiny") as call:
                out = await call.infer({"x": X}, 30.0)
            np.testing.assert_allclose(out["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
            return {dict(k)["backend"]: v for k, v in _samples(plane, "hotswap_request_success_total").items()}

    assert asyncio.run(go()) == {"failing": 0.0, "onnxruntime": 1.0}


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


def test_a_repository_without_models_says_so(registry):
    config = parse_config({"server": {}, "models": []}, "test", registry)
    repository = ModelRepository(config, registry, Metrics())
    _raises(ModelNotFound, "unknown model 'x'; models: none", lambda: repository.slot("x"))
