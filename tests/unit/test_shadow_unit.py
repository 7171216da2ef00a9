"""ShadowParity (serve/shadow.py) in-process on real backends: the tiny network on onnxruntime as the
primary, on torch as the shadow. Each verdict (match, mismatch, error, dropped) with its counters,
histograms and the summary read whole; sampling; a shadow that answers by other names refused at
start. Over HTTP, with the failover supervisor around it: tests/api/test_shadow.py."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from hotswap.backends.registry import discover_backends
from hotswap.config import parse_config
from hotswap.errors import ConfigError
from hotswap.models.signature import Signature, TensorSpec
from hotswap.serve.metrics import Metrics
from hotswap.serve.shadow import ShadowParity, comparable, describe, finite_or_text, lower_priority, parity, within
from hotswap.testing import TinyModels

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10
IO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                  {"name": "z", "datatype": "FP32", "shape": [-1, 1]}]}


def model(tiny: TinyModels, source=None, **shadow):
    config = {"name": "tiny", "source": str(source or tiny.onnx), "backends": [{"name": "onnxruntime"}], **IO,
              "shadow": {"backend": {"name": "torch", "device": "cpu"}, "sample": 1.0, "max_queue": 4, "nice": 0,
                         "atol": 1e-4, "min_cosine": 0.9999, **shadow}}
    if source is None:
        config["source"] = str(tiny.exported)  # the shadow loads the torch.export file with declared names
    return parse_config({"server": {"model_roots": [str(tiny.onnx.parent)]}, "models": [config]}, "test").models[0]


def samples(metrics: Metrics, name: str) -> dict[str, float]:
    return {s.labels.get("result", s.name): s.value for family in metrics.registry.collect() for s in family.samples
            if s.name == name and s.labels.get("model") == "tiny"}


async def settle(shadow: ShadowParity, total: int) -> None:
    for _ in range(500):
        if sum(shadow.counts.values()) >= total:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {dict(shadow.counts)} after 5 s")


def test_each_verdict_is_counted_observed_and_summarised(tiny):
    metrics = Metrics()
    shadow = ShadowParity(model(tiny), discover_backends(), metrics)
    reference = tiny.reference({"x": X})
    fresh = shadow.summary()
    assert (fresh["worst_cosine"], fresh["worst_max_abs_error"], fresh["last_error"], fresh["last_mismatch"]) == \
        (1.0, 0.0, "", None)

    async def go():
        await shadow.start()
        assert shadow._task is not None and shadow._task.get_name() == "hotswap-shadow-tiny"
        wrong = {"y": reference["y"] + np.array([[0.0, 0.0, 0.0, 0.5], [0.0] * 4], np.float32), "z": reference["z"]}
        shadow.offer({"x": X}, wrong)  # off by 0.5 in one value
        shadow.offer({"x": X}, reference)  # agrees (and the worst seen stays the mismatch's)
        shadow.offer({"x": X[:, :4]}, reference)  # the shadow cannot run it: an error, not the client's
        await settle(shadow, 3)
        summary = shadow.summary()
        await shadow.close()
        assert shadow._task.done()
        return summary

    summary = asyncio.run(go())
    assert summary["batches"] == {"match": 1, "mismatch": 1, "error": 1, "dropped": 0}
    assert summary["backend"] == "torch[cpu]" and summary["device"] == "cpu" and summary["queued"] == 0
    assert (summary["sample"], summary["atol"], summary["min_cosine"]) == (1.0, 1e-4, 0.9999)
    assert summary["worst_max_abs_error"] == pytest.approx(0.5, abs=1e-5)
    assert -1.0 < summary["worst_cosine"] < 0.9999
    mismatch = summary["last_mismatch"]
    assert mismatch["max_abs_error"] == pytest.approx(0.5, abs=1e-5) and mismatch["rows"] == 2
    assert mismatch["min_cosine"] == summary["worst_cosine"] and mismatch["at"] > 0
    assert summary["last_error"].startswith("InvalidInput: ") or summary["last_error"].startswith("BackendError: ")
    assert samples(metrics, "hotswap_shadow_batches_total") == {"match": 1.0, "mismatch": 1.0, "error": 1.0,
                                                                 "dropped": 0.0}
    assert samples(metrics, "hotswap_shadow_duration_seconds_count") == {"hotswap_shadow_duration_seconds_count": 2}
    assert 0 < samples(metrics, "hotswap_shadow_duration_seconds_sum")["hotswap_shadow_duration_seconds_sum"] < 30
    assert samples(metrics, "hotswap_shadow_max_abs_error_count") == {"hotswap_shadow_max_abs_error_count": 2}
    assert samples(metrics, "hotswap_shadow_cosine_count") == {"hotswap_shadow_cosine_count": 4}  # per row


def test_a_full_queue_drops_and_sampling_skips(tiny):
    metrics = Metrics()
    full = ShadowParity(model(tiny, max_queue=1), discover_backends(), metrics)
    reference = tiny.reference({"x": X})

    async def go():
        await full.start()
        for _ in range(3):  # no await in between: the worker cannot take any yet
            full.offer({"x": X}, reference)
        dropped, queued = full.counts["dropped"], full.summary()["queued"]
        await settle(full, 3)
        await full.close()
        return dropped, queued

    assert asyncio.run(go()) == (2, 1)
    assert full.counts == {"dropped": 2, "match": 1}
    never = ShadowParity(model(tiny, sample=1e-9), discover_backends(), Metrics())
    never._random.seed(0)
    for _ in range(100):
        never.offer({"x": X}, reference)
    assert never._queue.qsize() == 0 and sum(never.counts.values()) == 0


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape)


def signature(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Signature:
    return Signature(inputs=tuple(inputs), outputs=tuple(outputs))


def test_a_shadow_answering_by_other_names_is_refused_at_start(tiny):
    config = model(tiny, source=tiny.exported).model_copy(update={"inputs": None, "outputs": None})
    shadow = ShadowParity(config, discover_backends(), Metrics())
    primary = signature([spec("x", "FP32", [-1, 8])], [spec("y", "FP32", [-1, 4]), spec("z", "FP32", [-1, 1])])

    async def go():
        with pytest.raises(ConfigError) as info:
            await shadow.start(primary)
        return str(info.value)

    message = asyncio.run(go())
    assert shadow._pipeline is None  # the loaded shadow was closed with the refusal
    assert message.startswith("models.tiny.shadow: the shadow backend torch[cpu] serves x FP32[")
    assert message.endswith("but the model serves x FP32[-1,8] -> y FP32[-1,4], z FP32[-1,1]; declare the model's "
                            "`inputs` and `outputs` in its config so both backends answer by the same names")


def test_a_model_without_shadow_is_refused():
    plain = {"name": "m", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}]}
    config = parse_config({"models": [plain]}, "test").models[0]
    with pytest.raises(ValueError) as info:
        ShadowParity(config, discover_backends(), Metrics())
    assert str(info.value) == "ShadowParity needs a model with `shadow:`"


def test_the_helpers_compare_what_must_agree():
    a = signature([spec("x", "FP32", [-1, 8])], [spec("y", "FP32", [-1, 4])])
    b = signature([spec("x", "FP32", [2, 8])], [spec("y", "FP32", [2, 4])])
    assert comparable(a) == comparable(b) == ((("x", "FP32", 2),), (("y", "FP32", 2),))
    assert comparable(a) != comparable(signature(list(a.inputs), [spec("y", "FP16", [-1, 4])]))
    assert describe(a) == "x FP32[-1,8] -> y FP32[-1,4]"
    assert finite_or_text(0.5) == 0.5 and finite_or_text(float("inf")) == "inf"
    assert finite_or_text(float("nan")) == "nan"
    assert within(1e-3, np.array([0.999]), 1e-3, 0.999) and not within(2e-3, np.array([1.0]), 1e-3, 0.999)
    assert not within(0.0, np.array([0.998, 1.0]), 1e-3, 0.999) and not within(float("nan"), np.ones(1), 1.0, 0.0)
    assert not within(0.0, np.array([float("nan")]), 1.0, -1.0)


def test_a_shadow_never_started_closes_and_one_of_string_outputs_matches(tiny):
    shadow = ShadowParity(model(tiny), discover_backends(), Metrics())
    asyncio.run(shadow.close())  # no task, no pipeline: nothing to wait for
    shadow._judge(0.001, 0.0, np.ones(0))  # no numeric output to compare: a match, with no rows
    assert shadow.counts == {"match": 1} and shadow.worst_cosine == 1.0


def test_a_relative_source_is_read_from_the_config_folder(tiny):
    relative = model(tiny).model_copy(update={"source": tiny.exported.name})
    shadow = ShadowParity(relative, discover_backends(), Metrics(), config_dir=tiny.exported.parent)

    async def go():
        await shadow.start()
        device = shadow.device
        await shadow.close()
        return device

    assert asyncio.run(go()) == "cpu"


def test_parity_skips_text_outputs_but_compares_the_numeric_ones_after_them():
    labels = np.array(["a", "b"])
    reference = {"label": labels, "y": np.array([[1.0, 0.0], [0.0, 1.0]])}
    max_abs, cosine = parity(reference, {"label": labels, "y": np.array([[1.0, 0.0], [1.0, 0.0]])})
    assert max_abs == 1.0 and cosine.tolist() == [1.0, 0.0]


def test_parity_of_a_shape_mismatch_is_the_worst_per_row_and_of_no_rows_is_exact():
    one_row = {"y": np.ones((1, 4))}
    max_abs, cosine = parity(one_row, {"y": np.ones((1, 3))})
    assert max_abs == float("inf") and cosine.tolist() == [-1.0]  # one row: one verdict, not two
    max_abs, cosine = parity({"y": np.ones((0, 4))}, {"y": np.ones((0, 3))})
    assert max_abs == float("inf") and cosine.tolist() == [-1.0]  # no rows: still one verdict
    max_abs, cosine = parity({"y": np.ones((0, 4))}, {"y": np.ones((0, 4))})
    assert max_abs == 0.0 and cosine.shape == (0,)


def test_nice_zero_leaves_the_thread_priority_alone():
    seen: list[int] = []

    def thread() -> None:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, 3)  # raising a nice value needs no privilege
        lower_priority(0)  # "0: no change", not "back to 0"
        seen.append(os.getpriority(os.PRIO_PROCESS, me))
        lower_priority(5)
        seen.append(os.getpriority(os.PRIO_PROCESS, me))

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    assert seen == [3, 5]


def test_the_shadow_loads_runs_and_closes_on_its_own_thread(tiny):
    shadow = ShadowParity(model(tiny), discover_backends(), Metrics())
    assert shadow.summary()["device"] == ""  # not loaded yet
    threads: list[str] = []

    def recorded(method):
        def call(*args):
            threads.append(threading.current_thread().name)
            return method(*args)
        return call

    async def go():
        await shadow.start()
        assert shadow._pipeline is not None
        shadow._pipeline.run = recorded(shadow._pipeline.run)
        shadow._pipeline.close = recorded(shadow._pipeline.close)
        shadow.offer({"x": X}, tiny.reference({"x": X}))
        await settle(shadow, 1)
        await shadow.close()

    asyncio.run(go())
    assert shadow.counts == {"match": 1}
    assert threads == ["hotswap-tiny-shadow_0", "hotswap-tiny-shadow_0"]


def test_an_error_is_kept_to_300_characters(tiny):
    shadow = ShadowParity(model(tiny), discover_backends(), Metrics())

    async def go():
        await shadow.start()
        shadow.offer({"x" * 400: X}, tiny.reference({"x": X}))  # the shadow's error names this input
        await settle(shadow, 1)
        await shadow.close()

    asyncio.run(go())
    assert shadow.counts == {"error": 1}
    assert len(shadow.last_error) == 300 and "x" * 100 in shadow.last_error


def test_a_processor_error_names_the_model_key(tiny):
    from hotswap.config import ProcessorConfig

    config = model(tiny).model_copy(update={"processor": ProcessorConfig(name="no-such-processor")})
    shadow = ShadowParity(config, discover_backends(), Metrics())
    with pytest.raises(ConfigError) as info:
        asyncio.run(shadow.start())
    assert str(info.value).startswith("models.tiny.processor.name: ")
    assert "no-such-processor" in str(info.value)
