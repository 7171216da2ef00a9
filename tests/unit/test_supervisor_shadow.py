"""The supervisor with a `shadow:` (serve/supervisor.py starting serve/shadow.py), in process on real
backends: the tiny network's torch.export file on torch, shadowed by torch. The shadow is started
from the config's folder and checked against the primary's signature, each answered batch reaches it
whole, and a shadow that cannot start stops the model's start-up (nothing left half started)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import discover_backends
from hotswap.config import parse_config
from hotswap.errors import ConfigError
from hotswap.models.signature import Signature
from hotswap.serve.metrics import Metrics
from hotswap.serve.shadow import ShadowParity
from hotswap.serve.supervisor import ModelSupervisor
from tests.unit.supervisor_support import with_backends

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10
IO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                  {"name": "z", "datatype": "FP32", "shape": [-1, 1]}]}


def shadowed(tiny, source: str, **shadow) -> ModelSupervisor:
    """A supervisor of `source` (relative to the tiny models' folder, given as the config's folder) on
    torch, shadowed by torch, both on the CPU."""
    model = {"name": "tiny", "source": source, "backends": [{"name": "torch", "device": "cpu"}],
             **IO,
             "shadow": {"backend": {"name": "torch", "device": "cpu"}, "sample": 1.0, "nice": 0, **shadow}}
    folder = tiny.onnx.parent
    config = parse_config({"server": {"model_roots": [str(folder)]}, "models": [model]}, "test")
    return ModelSupervisor(config.models[0], discover_backends(), Metrics(), config_dir=folder, drain_timeout_s=5)


def test_the_shadow_starts_from_the_config_folder_and_sees_every_answered_batch(tiny):
    sup = shadowed(tiny, tiny.exported.name)  # a relative source: found only through config_dir
    metrics = sup._metrics

    async def go():
        await sup.start()
        shadow = sup.shadow
        assert isinstance(shadow, ShadowParity) and shadow.config is sup.config.shadow
        answers = [await sup.infer({"x": X[:1]}, 10.0), await sup.infer({"x": X}, 10.0)]
        for _ in range(500):
            if sum(shadow.counts.values()) >= 2:
                break
            await asyncio.sleep(0.01)
        counts = dict(shadow.counts)
        await sup.close(1)
        return answers, counts

    answers, counts = asyncio.run(go())
    np.testing.assert_allclose(answers[1]["y"], tiny.reference({"x": X})["y"], atol=1e-5)
    assert counts == {"match": 2}, "each batch, its inputs and its outputs, reached the shadow"
    matches = [s.value for family in metrics.registry.collect() for s in family.samples
               if s.name == "hotswap_shadow_batches_total" and s.labels.get("result") == "match"]
    assert matches == [2.0], "counted in the supervisor's own metrics"


class Renamed(OnnxRuntimeBackend):
    """onnxruntime that names its outputs as a torch.export file does (output_0, output_1)."""

    name = "renamed"

    def _load(self, artifact, options, declared):
        served = super()._load(artifact, options, declared)
        outputs = tuple(spec.model_copy(update={"name": f"output_{i}"}) for i, spec in enumerate(served.outputs))
        return Signature(inputs=served.inputs, outputs=outputs)


def test_a_shadow_that_answers_by_other_names_stops_the_start_and_closes_the_primary(tiny):
    registry = with_backends(Renamed)
    model = {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}],
             "shadow": {"backend": {"name": "renamed"}, "sample": 1.0, "nice": 0}}
    config = parse_config({"server": {"model_roots": [str(tiny.onnx.parent)]}, "models": [model]}, "test", registry)
    sup = ModelSupervisor(config.models[0], registry, Metrics(), drain_timeout_s=5)

    async def go():
        with pytest.raises(ConfigError, match=r"the shadow backend renamed serves .* but the model serves x FP32"):
            await sup.start()
        return sup.shadow, sup.active, sup._closed

    assert asyncio.run(go()) == (None, None, True), "the model did not start half way"
