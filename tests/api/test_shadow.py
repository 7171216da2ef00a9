"""Shadow parity against a real server: live batches re-run on a second backend after the
primary answered; the fault-injecting plugin plays the drifting chip or the slow shadow."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_support import TINY_IO, LiveServer, infer_tiny, tiny_input
from fault_support import serve_models, wait_for

from hotswap.testing import TinyModels


@pytest.fixture
def start(fault_registry, tmp_path_factory, tiny: TinyModels) -> Iterator[Callable[..., LiveServer]]:
    """start(primary entry, shadow section) -> a server for model `m` (tiny network)."""
    with ExitStack() as stack:
        def run(primary: dict, shadow: dict) -> LiveServer:
            model = {"name": "m", "source": str(tiny.onnx), "backends": [primary], "shadow": shadow}
            return serve_models(stack, fault_registry, tmp_path_factory, [model])

        yield run


def shadow_batches(server: LiveServer, shadow: str) -> dict[str, float]:
    return {dict(labels)["result"]: v for (name, labels), v in server.metrics().items()
            if name == "hotswap_shadow_batches_total" and dict(labels)["shadow"] == shadow}


def sample(server: LiveServer, name: str, **labels: str) -> float:
    return server.metrics().get((name, frozenset({"model": "m", "version": "1", **labels}.items())), 0.0)


def summary(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/v2/models/m", timeout=10).json()["shadow"]


def send_until_matched(server: LiveServer, shadow: str, requests: int, rows: int) -> None:
    """Send `requests` tiny requests of `rows` rows, then wait until the shadow matched each batch."""
    client = server.client()
    for i in range(requests):
        infer_tiny(client, "m", tiny_input(rows, seed=i))
    client.close()
    wait_for(lambda: shadow_batches(server, shadow).get("match") == requests, what=f"{requests} matches")


def test_a_perturbed_primary_is_caught_by_the_shadow_while_clients_are_served(start, tiny):
    server = start({"name": "fault", "mode": "perturb", "perturb": 0.01},
                   {"backend": {"name": "onnxruntime"}, "sample": 1.0, "atol": 1e-3})
    client = server.client()
    for i in range(8):
        x = tiny_input(2, seed=i)
        y = infer_tiny(client, "m", x).as_numpy("y")  # clients get the primary's (drifted) answer
        np.testing.assert_allclose(y, tiny.reference({"x": x})["y"] + 0.01, atol=1e-5)
    client.close()
    counts = wait_for(lambda: (c := shadow_batches(server, "onnxruntime")).get("mismatch", 0) == 8 and c,
                      what="8 mismatches")
    assert counts == {"match": 0, "mismatch": 8, "error": 0, "dropped": 0}
    meta = summary(server)
    assert meta["backend"] == "onnxruntime" and meta["batches"]["mismatch"] == 8
    assert meta["last_mismatch"]["max_abs_error"] == pytest.approx(0.01, abs=1e-4)
    assert meta["worst_max_abs_error"] == pytest.approx(0.01, abs=1e-4)
    assert sample(server, "hotswap_shadow_max_abs_error_count", shadow="onnxruntime") == 8
    assert sample(server, "hotswap_shadow_max_abs_error_bucket", shadow="onnxruntime", le="0.001") == 0
    assert sample(server, "hotswap_shadow_cosine_count", shadow="onnxruntime") == 16, "one per row"


def test_an_agreeing_shadow_counts_matches_and_its_own_latency(start, tiny):
    server = start({"name": "onnxruntime"}, {"backend": {"name": "fault"}, "sample": 1.0})
    send_until_matched(server, "fault", requests=5, rows=3)
    assert shadow_batches(server, "fault")["mismatch"] == 0
    assert sample(server, "hotswap_shadow_duration_seconds_count", shadow="fault") == 5
    assert sample(server, "hotswap_shadow_cosine_bucket", shadow="fault", le="0.99999") == 0, "all rows ~1.0"
    assert summary(server)["worst_cosine"] > 0.99999


def test_a_slow_shadow_never_delays_clients_and_its_overflow_is_dropped(start, tiny):
    delay_ms = 300
    server = start({"name": "onnxruntime"}, {"backend": {"name": "fault", "mode": "slow", "delay_ms": delay_ms},
                                            "sample": 1.0, "max_queue": 1})
    client = server.client()
    requests = 12
    started = time.perf_counter()
    for i in range(requests):
        infer_tiny(client, "m", tiny_input(1, seed=i))
    took = time.perf_counter() - started
    client.close()
    assert took < requests * delay_ms / 1000 / 3, f"{requests} requests took {took:.2f}s: the shadow delayed them"
    counts = wait_for(lambda: sum((c := shadow_batches(server, "fault")).values()) == requests and c,
                      what="every offered batch accounted for")
    assert counts["dropped"] >= requests - 4, counts
    assert counts["match"] == requests - counts["dropped"]
    assert summary(server)["batches"]["dropped"] == counts["dropped"]


def test_a_failing_shadow_is_counted_and_never_fails_a_client(start, tiny):
    server = start({"name": "onnxruntime"}, {"backend": {"name": "fault", "mode": "raise"}, "sample": 1.0})
    client = server.client()
    for i in range(4):
        x = tiny_input(1, seed=i)
        np.testing.assert_allclose(infer_tiny(client, "m", x).as_numpy("y"), tiny.reference({"x": x})["y"],
                                   atol=1e-5)
    client.close()
    wait_for(lambda: shadow_batches(server, "fault").get("error") == 4, what="4 shadow errors")
    assert "injected device fault" in summary(server)["last_error"]


def nice_threads(nice: int) -> set[int]:
    """Native ids of this process's threads whose nice value is `nice` (field 19 of /proc stat)."""
    found = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        if int(fields[16]) == nice:
            found.add(int(task.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_shadow_and_the_runtime_threads_it_starts_run_at_the_lowest_cpu_priority(start, tiny):
    """On shared cores the shadow may only take what the primary leaves idle: its thread, and the
    pool threads its onnxruntime session starts, have nice 19; the primary's thread keeps 0."""
    before = nice_threads(19)
    server = start({"name": "onnxruntime"},
                   {"backend": {"name": "onnxruntime", "intra_op_threads": 2}, "sample": 1.0})
    infer_tiny(server.client(), "m", tiny_input(2))
    supervisor = server.app.state.dataplane.repository.ready_supervisor("m", None)
    shadow_thread = next(iter(supervisor.shadow._executor._threads)).native_id
    primary_thread = next(iter(supervisor.active._executors[0]._threads)).native_id
    lowered = nice_threads(19) - before
    assert shadow_thread in lowered
    assert len(lowered) >= 2, "onnxruntime's intra-op pool thread did not inherit the shadow's priority"
    assert primary_thread in nice_threads(0)


def test_a_shadow_answering_by_other_names_is_refused_at_load(fault_registry, tmp_path_factory, tiny, capfd):
    """A torch.export file names its outputs output_0, output_1: a torch shadow of an ONNX primary
    without declared inputs/outputs could only report mismatches, so start-up stops and says why."""
    folder = str(tiny.onnx.parent)  # .onnx for the primary, .pt2 for the shadow
    model = {"name": "m", "source": folder, "backends": [{"name": "onnxruntime"}],
             "shadow": {"backend": {"name": "torch"}, "sample": 1.0}}
    with pytest.raises(RuntimeError, match=r"exited during start-up"), ExitStack() as stack:
        serve_models(stack, fault_registry, tmp_path_factory, [model])
    log = capfd.readouterr().err
    assert ("models.m.shadow: the shadow backend torch serves x FP32[-1,8] -> output_0 FP32[-1,4], "
            "output_1 FP32[-1,1] but the model serves x FP32[-1,8] -> y FP32[-1,4], z FP32[-1,1]; declare "
            "the model's `inputs` and `outputs`") in log


def test_a_shadow_with_declared_names_compares_across_formats(start_declared, tiny):
    server = start_declared
    send_until_matched(server, "torch", requests=3, rows=2)
    assert shadow_batches(server, "torch")["mismatch"] == 0


@pytest.fixture
def start_declared(fault_registry, tmp_path_factory, tiny: TinyModels) -> Iterator[LiveServer]:
    with ExitStack() as stack:
        model = {"name": "m", "source": str(tiny.onnx.parent), "backends": [{"name": "onnxruntime"}],
                 "shadow": {"backend": {"name": "torch"}, "sample": 1.0}, **TINY_IO}
        yield serve_models(stack, fault_registry, tmp_path_factory, [model])
