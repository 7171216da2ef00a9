"""Runtime failover against a real server: the fault-injecting plugin backend as primary,
onnxruntime CPU next in the chain, real tritonclient requests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
from api_support import LiveServer, infer_tiny, tiny_input
from fault_support import serve_models, wait_for
from tritonclient.utils import InferenceServerException

from hotswap.testing import TinyModels


@pytest.fixture
def start(fault_registry, tmp_path_factory, tiny: TinyModels) -> Iterator[Callable[..., LiveServer]]:
    """start(fault options, failover section) -> a server for model `m`: [fault, onnxruntime]."""
    with ExitStack() as stack:
        def run(fault: dict, failover: dict | None, **extra) -> LiveServer:
            model = {"name": "m", "source": str(tiny.onnx), "failover": failover,
                     "backends": [{"name": "fault", **fault}, {"name": "onnxruntime"}], **extra}
            return serve_models(stack, fault_registry, tmp_path_factory, [model])

        yield run


def metadata(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/v2/models/m", timeout=10).json()


def failovers(server: LiveServer, old: str, new: str, reason: str) -> float:
    labels = frozenset({"model": "m", "from": old, "to": new, "reason": reason}.items())
    return server.metrics().get(("hotswap_failover_total", labels), 0.0)


def failures(server: LiveServer) -> float:
    return sum(v for (name, labels), v in server.metrics().items()
               if name == "hotswap_request_failure_total" and labels)


def hammer(server: LiveServer, tiny: TinyModels, requests: int, threads: int = 8) -> list[object]:
    """`requests` real inferences from `threads` clients: each the answer's max error, or the exception."""
    def one(i: int) -> object:
        client = server.client()
        try:
            x = tiny_input(1 + i % 3, seed=i)
            return float(np.abs(infer_tiny(client, "m", x).as_numpy("y") - tiny.reference({"x": x})["y"]).max())
        except InferenceServerException as exc:
            return exc
        finally:
            client.close()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(requests)))


def test_a_raising_primary_fails_over_and_no_client_sees_an_error(start, tiny):
    server = start({"mode": "raise", "after": 3}, {"after_errors": 2})
    assert metadata(server)["backend"]["name"] == "fault"
    results = hammer(server, tiny, 60)
    errors = [r for r in results if not isinstance(r, float)]
    assert errors == [], f"clients saw errors during the failover: {errors[:3]}"
    assert max(results) < 1e-5, "every answer is the real model's (before and after the switch)"
    meta = metadata(server)
    assert meta["backend"]["name"] == "onnxruntime" and meta["backend"]["chain_position"] == 1
    assert meta["failover"]["state"] == "failed_over" and meta["failover"]["reason"] == "errors"
    assert [(s["from"], s["to"], s["reason"]) for s in meta["failover"]["history"]] == \
        [("fault", "onnxruntime", "errors")]
    assert failovers(server, "fault", "onnxruntime", "errors") == 1
    assert failures(server) == 0
    retried = server.metrics()[("hotswap_failover_retries_total", frozenset({"model": "m"}.items()))]
    assert retried >= 1, "the failed batches' requests were retried"


def test_without_retry_the_failed_batches_reach_clients_then_traffic_moves(start, tiny):
    server = start({"mode": "raise"}, {"after_errors": 2, "retry": False})
    client = server.client()
    outcomes = []
    for i in range(6):  # one at a time: each request is its own batch
        try:
            infer_tiny(client, "m", tiny_input(1, seed=i))
            outcomes.append("ok")
        except InferenceServerException as exc:
            outcomes.append(str(exc.status()))
    client.close()
    assert outcomes == ["500", "500", "ok", "ok", "ok", "ok"], "after_errors=2 failed batches, then onnxruntime"
    assert failovers(server, "fault", "onnxruntime", "errors") == 1


def test_a_hung_primary_is_detected_within_batch_timeout_and_its_request_answered(start, tiny):
    hang_s = 6.0
    server = start({"mode": "hang", "hang_s": hang_s}, {"batch_timeout_ms": 300})
    client = server.client()
    x = tiny_input(2, seed=7)
    started = time.perf_counter()
    y = infer_tiny(client, "m", x).as_numpy("y")
    took = time.perf_counter() - started
    np.testing.assert_allclose(y, tiny.reference({"x": x})["y"], atol=1e-5)
    assert took < 3.0, f"the hung batch's request was answered after {took:.2f}s, not near batch_timeout_ms"
    assert metadata(server)["backend"]["name"] == "onnxruntime"
    assert metadata(server)["failover"]["reason"] == "hung"
    assert failovers(server, "fault", "onnxruntime", "hung") == 1
    started = time.perf_counter()
    infer_tiny(client, "m", x)  # the next request does not queue behind the abandoned instance
    assert time.perf_counter() - started < 1.0
    client.close()


def test_standby_is_loaded_ahead_and_is_what_traffic_moves_to(start, tiny):
    server = start({"mode": "raise", "after": 2}, {"after_errors": 1, "standby": True})
    supervisor = server.app.state.dataplane.repository.slots["m"].supervisor
    standby = supervisor.standby
    assert standby is not None and metadata(server)["failover"]["standby"] == "onnxruntime"
    assert [r for r in hammer(server, tiny, 20, threads=4) if not isinstance(r, float)] == []
    assert supervisor.active is standby, "the switch promoted the warm standby, not a cold load"
    switch = metadata(server)["failover"]["history"][-1]
    assert switch["to"] == "onnxruntime" and switch["switch_ms"] < 1000


def test_traffic_returns_to_the_primary_only_once_it_recovers(start, tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    server = start({"mode": "raise", "while_file": str(broken)}, {"after_errors": 1, "retry_primary_after_s": 0.2})
    assert [r for r in hammer(server, tiny, 10, threads=2) if not isinstance(r, float)] == []
    assert metadata(server)["backend"]["name"] == "onnxruntime"
    probe = wait_for(lambda: metadata(server)["failover"]["last_probe"], what="a probe of the primary")
    assert "injected device fault" in probe["result"], "the probe ran the primary on recent inputs and it failed"
    assert metadata(server)["failover"]["state"] == "failed_over", "a failing primary is not taken back"
    broken.unlink()  # the device is repaired
    wait_for(lambda: metadata(server)["backend"]["name"] == "fault", what="traffic back on the primary")
    meta = metadata(server)["failover"]
    assert meta["state"] == "serving" and meta["reason"] == "preferred_recovered"
    assert [s["reason"] for s in meta["history"]] == ["errors", "preferred_recovered"]
    assert failovers(server, "onnxruntime", "fault", "preferred_recovered") == 1
    assert [r for r in hammer(server, tiny, 10, threads=2) if not isinstance(r, float)] == []
    selected = {dict(labels)["backend"]: v for (name, labels), v in server.metrics().items()
                if name == "hotswap_backend_selected"}
    assert selected == {"fault": 1.0, "onnxruntime": 0.0}, "/metrics shows the primary serving again"


def test_with_no_later_entry_that_loads_the_model_is_degraded_and_keeps_serving(fault_registry, tmp_path_factory,
                                                                                tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    model = {"name": "m", "source": str(tiny.onnx), "failover": {"after_errors": 1, "retry": False},
             "backends": [{"name": "fault", "mode": "raise", "after": 1},
                          {"name": "fault", "while_file": str(broken), "fail_load_while_file": True}]}
    with ExitStack() as stack:
        server = serve_models(stack, fault_registry, tmp_path_factory, [model])
        client = server.client()
        infer_tiny(client, "m", tiny_input(1))
        with pytest.raises(InferenceServerException, match="injected device fault"):
            infer_tiny(client, "m", tiny_input(1))
        meta = wait_for(lambda: (m := metadata(server))["failover"]["state"] == "degraded" and m,
                        what="the degraded state")
        assert meta["backend"]["chain_position"] == 0 and "no later chain entry loads" in meta["failover"]["reason"]
        assert not [k for k in server.metrics() if k[0] == "hotswap_failover_total"], "no switch happened"
        client.close()
