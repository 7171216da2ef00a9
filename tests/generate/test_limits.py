"""Bounds and cancellation: a client that goes away stops costing compute; a full engine answers 503."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.generate.generate_support import GENERATION, MODEL, metric

pytestmark = pytest.mark.slow

LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
        "ignore_eos": True, "temperature": 0, "stream": True}


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_disconnected_stream_stops_consuming_compute(live):
    cancelled = metric(live, "hotswap_generate_cancelled_total")
    before = metric(live, "hotswap_generate_tokens_total")
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=LONG, timeout=60) as response:
        lines = response.iter_lines()
        assert sum(1 for line, _ in zip(lines, range(6), strict=False) if line.startswith("data: ")) >= 3
    # Leaving the block closes the connection mid-stream.
    wait_for(lambda: metric(live, "hotswap_generate_cancelled_total") == cancelled + 1)
    wait_for(lambda: metric(live, "hotswap_generate_running_sequences") == 0)
    settled = metric(live, "hotswap_generate_tokens_total")
    time.sleep(1.0)
    assert metric(live, "hotswap_generate_tokens_total") == settled  # nothing decoded for it any more
    assert settled - before < 200  # far fewer than the 400 it asked for


def test_a_non_streamed_request_is_cancelled_when_its_client_gives_up(live):
    cancelled = metric(live, "hotswap_generate_cancelled_total")
    body = {"text_input": "Tell me a long story.", "parameters": {"max_tokens": 400, "ignore_eos": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}/v2/models/{MODEL}/generate", json=body, timeout=1.5)
    wait_for(lambda: metric(live, "hotswap_generate_cancelled_total") == cancelled + 1)
    wait_for(lambda: metric(live, "hotswap_generate_running_sequences") == 0)


def test_503_with_retry_after_when_running_and_waiting_are_full(live):
    capacity = GENERATION["max_sequences"] + GENERATION["max_waiting"]
    release = threading.Event()
    opened: list[int] = []

    def hold() -> None:
        with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=LONG, timeout=120) as response:
            opened.append(response.status_code)
            release.wait(120)

    threads = [threading.Thread(target=hold) for _ in range(capacity)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: metric(live, "hotswap_generate_running_sequences") == GENERATION["max_sequences"]
                 and metric(live, "hotswap_generate_waiting_sequences") == GENERATION["max_waiting"])
        full = httpx.post(f"{live.url}/v1/chat/completions", json={**LONG, "stream": False}, timeout=30)
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        v2 = httpx.post(f"{live.url}/v2/models/{MODEL}/generate_stream", json={"text_input": "Hi"}, timeout=30)
        assert v2.status_code == 503 and "retry" in v2.json()["error"]
        assert metric(live, "hotswap_generate_kv_cache_tokens") > 0
        assert 0 < metric(live, "hotswap_generate_kv_cache_usage_ratio") < 1
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert opened == [200] * capacity
    wait_for(lambda: metric(live, "hotswap_generate_running_sequences") == 0
             and metric(live, "hotswap_generate_waiting_sequences") == 0)
    ok = httpx.post(f"{live.url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200  # every slot came back


def test_latency_metrics_are_recorded(live):
    assert metric(live, "hotswap_generate_time_to_first_token_seconds_count") > 0
    assert metric(live, "hotswap_generate_inter_token_latency_seconds_count") > 0
    assert metric(live, "hotswap_generate_prompt_tokens_total") > 0
