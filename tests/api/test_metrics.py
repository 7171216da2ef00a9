"""/metrics moves by exactly what the requests did, under the labels of what really ran."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from api_support import infer_tiny, tiny_input

LABELS = {
    "tiny": {"model": "tiny", "version": "1", "backend": "onnxruntime", "device": "cpu"},
    "tiny_torch": {"model": "tiny_torch", "version": "1", "backend": "torch", "device": "cpu"},
    "flaky": {"model": "flaky", "version": "1", "backend": "torch", "device": "cpu"},
}


def _key(name: str, labels: dict) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def _value(samples: dict, name: str, labels: dict) -> float:
    return samples.get(_key(name, labels), 0.0)


def _delta(before: dict, after: dict, name: str, labels: dict) -> float:
    return _value(after, name, labels) - _value(before, name, labels)


@pytest.mark.parametrize("model", ["tiny", "tiny_torch"])
def test_counts_move_by_requests_and_rows(server, client, tiny, model):
    labels = LABELS[model]
    rows = [1, 2, 3, 5]
    before = server.metrics()
    for i, n in enumerate(rows):  # one at a time: each request is its own batch
        x = tiny_input(n, seed=i)
        result = infer_tiny(client, model, x)
        np.testing.assert_allclose(result.as_numpy("y"), tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
    after = server.metrics()
    n = len(rows)
    expected = {
        "hotswap_request_success_total": n,
        "hotswap_inference_count_total": sum(rows),
        "hotswap_execution_count_total": n,
        "hotswap_request_duration_seconds_count": n,
        "hotswap_queue_duration_seconds_count": n,
        "hotswap_compute_input_duration_seconds_count": n,
        "hotswap_compute_infer_duration_seconds_count": n,
        "hotswap_compute_output_duration_seconds_count": n,
        "hotswap_batch_size_count": n,
        "hotswap_batch_size_sum": sum(rows),
    }
    for name, want in expected.items():
        assert _delta(before, after, name, labels) == want, name
    assert _delta(before, after, "hotswap_request_duration_seconds_sum", labels) > 0
    # Histogram buckets: the four batches of 1, 2, 3 and 5 rows land in le=1, 2, 4, 8.
    for le, want in (("1.0", 1), ("2.0", 2), ("4.0", 3), ("8.0", 4), ("+Inf", 4)):
        assert _delta(before, after, "hotswap_batch_size_bucket", labels | {"le": le}) == want, le
    assert _value(after, "hotswap_pending_requests", labels) == 0
    # Nothing was counted under another backend's labels for this model.
    other = labels | {"backend": "torch" if labels["backend"] == "onnxruntime" else "onnxruntime"}
    assert _delta(before, after, "hotswap_request_success_total", other) == 0


@pytest.mark.parametrize("model", ["tiny", "tiny_torch"])
def test_invalid_request_counts_as_failure(server, model):
    labels = LABELS[model]
    before = server.metrics()
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 8], "data": list(range(8))}]}
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 400
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", content=b"{", timeout=10)
    assert r.status_code == 400
    after = server.metrics()
    assert _delta(before, after, "hotswap_request_failure_total", labels | {"reason": "invalid_input"}) == 2
    assert _delta(before, after, "hotswap_request_success_total", labels) == 0
    assert _delta(before, after, "hotswap_execution_count_total", labels) == 0
    assert _delta(before, after, "hotswap_request_duration_seconds_count", labels) == 0


def test_backend_failure_counts_as_failure(server):
    labels = LABELS["flaky"]
    before = server.metrics()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [5000.0] * 8}]}
    r = httpx.post(f"{server.url}/v2/models/flaky/infer", json=body, timeout=10)
    assert r.status_code == 500
    after = server.metrics()
    assert _delta(before, after, "hotswap_request_failure_total", labels | {"reason": "backend_error"}) == 1
    assert _delta(before, after, "hotswap_request_success_total", labels) == 0
    assert _delta(before, after, "hotswap_execution_count_total", labels) == 0


def test_unknown_model_is_not_counted(server):
    before = server.metrics()
    r = httpx.post(f"{server.url}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert r.status_code == 404
    after = server.metrics()
    assert not any(dict(labels).get("model") == "nope" for _, labels in after)
    changed = {k for k in after if k[0].startswith("hotswap_request") and after[k] != before.get(k, 0.0)}
    assert changed == set()


def test_backend_info_and_selected(server):
    import onnxruntime
    import torch

    samples = server.metrics()
    info = {k: v for k, v in samples.items() if k[0] == "hotswap_backend_info"}
    assert info[_key("hotswap_backend_info", LABELS["tiny"] | {
        "providers": "CPUExecutionProvider", "precision": "as exported",
        "runtime": f"onnxruntime {onnxruntime.__version__}"})] == 1
    assert info[_key("hotswap_backend_info", LABELS["tiny_torch"] | {
        "providers": "", "precision": "float32", "runtime": f"torch {torch.__version__}"})] == 1
    for model in ("tiny", "tiny_torch", "flaky"):
        assert samples[_key("hotswap_backend_selected", LABELS[model] | {"position": "0"})] == 1
    selected = [dict(labels) for name, labels in samples if name == "hotswap_backend_selected"]
    assert {s["model"] for s in selected} == {"tiny", "tiny_torch", "strings", "flaky"}
    assert _value(samples, "hotswap_model_load_seconds", LABELS["tiny"]) > 0


def test_reload_keeps_backend_selected(server, client):
    """Reloading a model onto the same backend and device keeps it marked selected."""
    import onnxruntime

    client.load_model("tiny")
    assert client.is_model_ready("tiny")
    samples = server.metrics()
    assert samples[_key("hotswap_backend_selected", LABELS["tiny"] | {"position": "0"})] == 1
    assert samples[_key("hotswap_backend_info", LABELS["tiny"] | {
        "providers": "CPUExecutionProvider", "precision": "as exported",
        "runtime": f"onnxruntime {onnxruntime.__version__}"})] == 1


def test_metrics_content_type(server):
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE hotswap_request_success_total counter" in r.text
