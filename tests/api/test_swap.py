"""Backend hot-swap through the repository load API while clients keep sending requests."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from api_support import TINY_IO, LiveServer, infer_tiny, tiny_input

from hotswap.testing import skip_if_ort_provider

MODEL = "swap"
CLIENT_THREADS = 3
TRAFFIC_LIMIT_S = 8.0  # hard stop for the client threads whatever happens
MAX_REQUESTS_PER_THREAD = 3000


def _labels(backend: str) -> frozenset:
    return frozenset({"model": MODEL, "version": "1", "backend": backend, "device": "cpu"}.items())


def _successes(server: LiveServer, backend: str) -> float:
    return server.metrics().get(("hotswap_request_success_total", _labels(backend)), 0.0)


@pytest.fixture(scope="module")
def swap_server(server_factory, tiny) -> LiveServer:
    # A batch-fill window long enough that a swap usually finds requests being gathered into a batch.
    # The tiny folder holds .onnx, .pt and .pt2: a load may swap backends, never the source.
    return server_factory([{"name": MODEL, "source": str(tiny.onnx.parent), "backends": [{"name": "torch"}],
                            "batching": {"max_batch_size": 8, "max_queue_delay_ms": 5}, **TINY_IO}])


@pytest.fixture
def swap_client(swap_server):
    c = swap_server.client()
    yield c
    c.close()


def _onnx_config(tiny) -> str:
    return json.dumps({"backends": [{"name": "onnxruntime"}]})


def _torch_config(tiny) -> str:
    return json.dumps({"backends": [{"name": "torch", "device": "cpu"}]})


class Traffic:
    """Client threads, each with its own tritonclient, sending checked requests until stopped."""

    def __init__(self, server: LiveServer, tiny, threads: int = CLIENT_THREADS) -> None:
        self._server, self._tiny = server, tiny
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _loop(self, index: int) -> None:
        client = self._server.client(network_timeout=10.0, connection_timeout=10.0)
        deadline = time.monotonic() + TRAFFIC_LIMIT_S
        try:
            for i in range(MAX_REQUESTS_PER_THREAD):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                x = tiny_input(1 + (i + index) % 3, seed=index * 100_000 + i)
                try:
                    result = infer_tiny(client, MODEL, x, request_id=f"{index}-{i}")
                    want = self._tiny.reference({"x": x})
                    assert result.get_response()["id"] == f"{index}-{i}"
                    for name in ("y", "z"):
                        np.testing.assert_allclose(result.as_numpy(name), want[name], atol=1e-5, rtol=0)
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                    with self._lock:
                        self.errors.append(f"thread {index} request {i}: {type(exc).__name__}: {exc}")
                else:
                    with self._lock:
                        self.ok += 1
        finally:
            client.close()

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(TRAFFIC_LIMIT_S + 15)
        assert not any(t.is_alive() for t in self._threads), "a client thread is stuck"

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ok < count and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)


def _wait_successes(server: LiveServer, backend: str, more_than: float, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while (value := _successes(server, backend)) <= more_than and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_swap_under_load_and_back(swap_server, swap_client, tiny):
    assert swap_client.get_model_metadata(MODEL)["backend"]["name"] == "torch"
    torch_before = _successes(swap_server, "torch")
    onnx_before = _successes(swap_server, "onnxruntime")
    with Traffic(swap_server, tiny) as traffic:
        traffic.wait_for(20)
        swap_client.load_model(MODEL, config=_onnx_config(tiny))
        meta = swap_client.get_model_metadata(MODEL)
        assert meta["backend"]["name"] == "onnxruntime" and meta["backend"]["device"] == "cpu"
        assert meta["platform"] == "onnxruntime_onnx"
        assert [o["name"] for o in meta["outputs"]] == ["y", "z"]
        assert _wait_successes(swap_server, "onnxruntime", onnx_before) > onnx_before, traffic.errors[:3]
        torch_at_swap_back = _successes(swap_server, "torch")

        swap_client.load_model(MODEL, config=_torch_config(tiny))
        meta = swap_client.get_model_metadata(MODEL)
        assert meta["backend"]["name"] == "torch" and meta["platform"] == "torch_pt2"
        assert _wait_successes(swap_server, "torch", torch_at_swap_back) > torch_at_swap_back, traffic.errors[:3]
    assert traffic.errors == [], f"{len(traffic.errors)} failed requests, first: {traffic.errors[:3]}"
    assert traffic.ok > 40

    samples = swap_server.metrics()
    assert samples[("hotswap_request_success_total", _labels("torch"))] > torch_before
    assert samples[("hotswap_request_success_total", _labels("onnxruntime"))] > onnx_before
    total = sum(samples.get(("hotswap_request_success_total", _labels(b)), 0.0) for b in ("torch", "onnxruntime"))
    assert total - torch_before - onnx_before == traffic.ok
    assert not any(name == "hotswap_request_failure_total" and ("model", MODEL) in labels
                   for name, labels in samples)
    selected = {dict(labels)["backend"]: value for (name, labels), value in samples.items()
                if name == "hotswap_backend_selected" and ("model", MODEL) in labels}
    assert selected == {"torch": 1.0, "onnxruntime": 0.0}
    # What runs the model is only the serving backend: the swapped-out one's info is retired.
    info = {dict(labels)["backend"]: value for (name, labels), value in samples.items()
            if name == "hotswap_backend_info" and ("model", MODEL) in labels}
    assert info == {"torch": 1.0, "onnxruntime": 0.0}
    index = {m["name"]: m for m in swap_client.get_model_repository_index()}
    assert index[MODEL]["state"] == "READY"


def test_failed_load_keeps_serving_old_backend(swap_server, swap_client, tiny):
    """A swap onto a chain that cannot load (onnxruntime CUDA, absent here) is a 400; the old backend serves on."""
    skip_if_ort_provider("CUDAExecutionProvider")
    before = swap_client.get_model_metadata(MODEL)
    cuda = json.dumps({"backends": [{"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}]})
    with Traffic(swap_server, tiny, threads=2) as traffic:
        traffic.wait_for(10)
        with pytest.raises(httpclient.InferenceServerException) as info:
            swap_client.load_model(MODEL, config=cuda)
        traffic.wait_for(traffic.ok + 10)
    assert info.value.status() == "400"
    message = info.value.message()
    assert "CUDAExecutionProvider" in message
    assert f"failed to load model '{MODEL}'" in message
    assert traffic.errors == [], traffic.errors[:3]
    after = swap_client.get_model_metadata(MODEL)
    assert after["backend"] == before["backend"]
    assert after["platform"] == before["platform"]
    assert swap_client.is_model_ready(MODEL)
    index = {m["name"]: m for m in swap_client.get_model_repository_index()}
    assert index[MODEL]["state"] == "READY"
    x = tiny_input(2, seed=99)
    np.testing.assert_allclose(infer_tiny(swap_client, MODEL, x).as_numpy("y"), tiny.reference({"x": x})["y"],
                               atol=1e-5, rtol=0)


def test_chain_fallback_reports_skipped(swap_server, swap_client, tiny):
    """A chain whose first entry cannot run here swaps onto the next and says why in metadata."""
    skip_if_ort_provider("CUDAExecutionProvider")
    chain = json.dumps({"backends": [
        {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}, {"name": "onnxruntime"}]})
    try:
        for _ in range(2):  # the second load replaces a runner with the very same labels
            swap_client.load_model(MODEL, config=chain)
            meta = swap_client.get_model_metadata(MODEL)
            assert meta["backend"]["name"] == "onnxruntime" and meta["backend"]["chain_position"] == 1
            assert [s["position"] for s in meta["skipped"]] == [0]
            assert "CUDAExecutionProvider" in meta["skipped"][0]["reason"]
            assert _gauges(swap_server, "hotswap_backend_skipped") == {("0", "onnxruntime[CUDAExecutionProvider]"): 1}
            assert _gauges(swap_server, "hotswap_backend_selected")[("1", "onnxruntime")] == 1
            x = tiny_input(3, seed=5)
            np.testing.assert_allclose(infer_tiny(swap_client, MODEL, x).as_numpy("z"), tiny.reference({"x": x})["z"],
                                       atol=1e-5, rtol=0)
    finally:
        swap_client.load_model(MODEL, config=_torch_config(tiny))
    assert swap_client.get_model_metadata(MODEL)["backend"]["name"] == "torch"
    # Nothing was skipped at the last load, and only the torch entry is selected.
    assert _gauges(swap_server, "hotswap_backend_skipped") == {("0", "onnxruntime[CUDAExecutionProvider]"): 0}
    selected = _gauges(swap_server, "hotswap_backend_selected")
    assert selected[("0", "torch")] == 1 and selected[("1", "onnxruntime")] == 0


def _gauges(server: LiveServer, name: str) -> dict[tuple[str, str], float]:
    """{(position, backend): value} of a per-chain-entry gauge of MODEL."""
    return {(dict(labels)["position"], dict(labels)["backend"]): value
            for (sample, labels), value in server.metrics().items()
            if sample == name and ("model", MODEL) in labels}


@pytest.mark.parametrize("override, status, fragment", [
    ({"backends": [{"name": "onnxruntime", "not_an_option": 1}]}, "400", "not_an_option"),
    ({"backends": []}, "400", "parameters.config.backends"),
    # A request never chooses files or code: source, processor and declared tensors are the config file's.
    ({"source": "/tmp/evil.pt2", "backends": [{"name": "torch"}]}, "400", "cannot change source"),
    ({"processor": {"name": "text-embedding", "tokenizer": "/etc/passwd"}}, "400", "cannot change processor"),
    ({"name": "other"}, "400", "cannot change name"),
    ({"version": "v" * 20000}, "400", "cannot change version"),
    # Every knob has an upper bound, the same for files and the API.
    ({"batching": {"max_queue_delay_ms": 1e9}}, "400", "parameters.config.batching.max_queue_delay_ms"),
    ({"batching": {"max_batch_size": 10**6}}, "400", "parameters.config.batching.max_batch_size"),
    ({"batching": {"max_queue_size": 10**7}}, "400", "parameters.config.batching.max_queue_size"),
    ({"instances": 64}, "400", "parameters.config.instances"),
    ({"backends": [{"name": "onnxruntime"}] * 17}, "400", "parameters.config.backends"),
    ({"backends": [{"name": "x" * 1000}]}, "400", "parameters.config.backends.0.name"),
])
def test_bad_override_is_400_and_keeps_serving(swap_server, swap_client, tiny, override, status, fragment):
    with pytest.raises(httpclient.InferenceServerException) as info:
        swap_client.load_model(MODEL, config=json.dumps(override))
    assert info.value.status() == status, info.value.message()
    assert fragment in info.value.message()
    assert "Traceback" not in info.value.message()
    assert swap_client.get_model_metadata(MODEL)["backend"]["name"] == "torch"
    x = tiny_input(1, seed=1)
    np.testing.assert_allclose(infer_tiny(swap_client, MODEL, x).as_numpy("y"), tiny.reference({"x": x})["y"],
                               atol=1e-5, rtol=0)
