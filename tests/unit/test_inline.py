"""The inline decision (serve/inline.py): a running average of call times against inline_max_us."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hotswap.models.pipeline import StageTimes
from hotswap.serve.inline import MAX_PROBE_EVERY, PROBE_EVERY, InlinePolicy


def took(us: float) -> StageTimes:
    # Split over the three stages: the decision is on the whole call.
    return StageTimes(us / 4e6, us / 2e6, us / 4e6)


def test_unmeasured_instances_are_never_inline():
    policy = InlinePolicy(200, 2, allowed=True)
    assert not policy.inline(0) and not policy.inline(1)


def test_a_call_under_the_bound_goes_inline_for_its_own_instance_only():
    policy = InlinePolicy(200, 2, allowed=True)
    policy.observe(1, took(199), False)
    assert policy.inline(1) and not policy.inline(0)
    policy.observe(0, took(200), False)
    assert not policy.inline(0), "the bound itself is not under it"
    policy.observe(0, took(199.9999), False)
    assert policy.inline(0), "just under the bound, in microseconds"


def test_calls_that_grow_send_it_back_to_its_thread_through_the_running_average():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, took(100), False)
    policy.observe(0, took(500), False)  # 100 + 0.2 * 400 = 180: one slow call is not enough
    assert policy.inline(0)
    policy.observe(0, took(500), False)  # 180 + 0.2 * 320 = 244
    assert not policy.inline(0)


def test_not_allowed_or_zero_never_inline():
    for policy in (InlinePolicy(200, 1, allowed=False), InlinePolicy(0, 1, allowed=True)):
        policy.observe(0, took(0.001), False)
        assert not policy.inline(0)


def test_a_call_timed_slow_on_its_thread_is_probed_inline_and_comes_back_when_it_is_fast_there():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, took(300), False)  # 300 µs on the thread (waits for the GIL included)
    decisions = [policy.decide(0) for _ in range(PROBE_EVERY)]
    assert decisions == [False] * (PROBE_EVERY - 1) + [True], "one probe every PROBE_EVERY calls"
    policy.observe(0, took(60), True)  # the probe ran inline: its time replaces the average
    assert policy.inline(0) and policy.decide(0)
    policy.observe(0, took(100), True)  # an inline call once inline: averaged, not replaced
    assert policy.inline(0)


def test_a_probe_that_is_slow_inline_too_sends_it_back_and_slow_calls_are_never_probed():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, took(300), False)
    assert [policy.decide(0) for _ in range(PROBE_EVERY)][-1]
    policy.observe(0, took(250), True)
    assert not policy.inline(0)
    slow = InlinePolicy(200, 1, allowed=True)
    slow.observe(0, took(800), False)  # 4x the bound: a call that would block the loop is never tried
    assert not any(slow.decide(0) for _ in range(4 * PROBE_EVERY))
    never = InlinePolicy(200, 1, allowed=True)
    assert not any(never.decide(0) for _ in range(4 * PROBE_EVERY)), "an unmeasured instance is never probed"


def test_an_inline_call_replaces_an_average_exactly_at_the_bound():
    policy = InlinePolicy(max_us=100, instances=1, allowed=True)
    policy.observe(0, StageTimes(0.0, 100e-6, 0.0), ran_inline=False)  # average == the bound: not inline
    assert not policy.inline(0)
    policy.observe(0, StageTimes(0.0, 0.0, 0.0), ran_inline=True)  # a probe: its time replaces the average
    policy.observe(0, StageTimes(0.0, 400e-6, 0.0), ran_inline=False)  # 0 + 0.2 x 400 µs = 80 µs
    assert policy.inline(0)


def on_thread(wall_us: float, cpu_us: float) -> StageTimes:
    """A call on the instance's thread: `wall_us` long, of which its thread used `cpu_us` of CPU."""
    return StageTimes(0.0, wall_us / 1e6, 0.0, cpu_us / 1e6)


def test_a_call_long_on_its_thread_only_for_its_waits_is_probed_however_long_it_took():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, on_thread(1500, 50), False)  # 1.5 ms waiting for the GIL, 50 µs of work
    assert [policy.decide(0) for _ in range(PROBE_EVERY)] == [False] * (PROBE_EVERY - 1) + [True]
    policy.observe(0, on_thread(60, 55), True)
    assert policy.inline(0), "the probe was fast inline: it stays inline"
    busy = InlinePolicy(200, 1, allowed=True)
    busy.observe(0, on_thread(1500, 1000), False)  # a millisecond of CPU: it would block the loop
    assert not any(busy.decide(0) for _ in range(4 * PROBE_EVERY))


def test_a_probe_slow_inline_too_doubles_the_interval_and_a_fast_one_resets_it():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, on_thread(5000, 30), False)  # a device's wait: little CPU, a long call

    def next_probe() -> int:
        for calls in range(1, MAX_PROBE_EVERY + 1):
            if policy.decide(0):
                return calls
        raise AssertionError("no probe")

    intervals = []
    for _ in range(7):
        intervals.append(next_probe())
        policy.observe(0, on_thread(5000, 30), True)  # the probe, inline: as slow as on its thread
    assert intervals == [32, 64, 128, 256, 512, 1024, 1024]
    assert next_probe() == MAX_PROBE_EVERY
    policy.observe(0, on_thread(80, 70), True)  # fast inline after all: inline, and the interval reset
    assert policy.inline(0)
    policy.observe(0, on_thread(5000, 30), False)
    for _ in range(8):  # an average back over the bound (5 ms calls): on its thread again
        policy.observe(0, on_thread(5000, 30), False)
    assert not policy.inline(0)
    assert next_probe() == PROBE_EVERY


def test_the_pipeline_reports_its_thread_s_cpu_time_apart_from_its_waits(tiny):
    from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
    from hotswap.models.pipeline import Pipeline

    backend = OnnxRuntimeBackend()
    backend.load(Path(tiny.onnx), OnnxRuntimeBackend.Options())
    pipeline = Pipeline(backend, None, Path(tiny.onnx).parent)
    original = backend.infer

    def slow(inputs):  # a wait that costs no CPU, as a device's
        time.sleep(0.05)
        return original(inputs)

    backend.infer = slow  # type: ignore[method-assign]
    _, times = pipeline.run({"x": np.ones((2, 8), np.float32)})
    assert times.infer_s >= 0.05
    assert times.cpu_s is not None and 0 < times.cpu_s < 0.02, times


def test_the_cpu_time_that_gates_a_probe_is_a_running_average():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, on_thread(1500, 50), False)
    policy.observe(0, on_thread(1500, 1000), False)  # 50 + 0.2 x 950 = 240 µs of CPU: under 4 x 200, probed
    assert [policy.decide(0) for _ in range(PROBE_EVERY)][-1], "the average, not the latest call, gates a probe"
    busy = InlinePolicy(200, 1, allowed=True)
    busy.observe(0, on_thread(1500, 1000), False)
    for _ in range(3):
        busy.observe(0, on_thread(1500, 700), False)  # 1000 -> 940 -> 892 -> 854 µs: still over 800
    assert not any(busy.decide(0) for _ in range(4 * PROBE_EVERY))
    for _ in range(2):
        busy.observe(0, on_thread(1500, 100), False)  # cheaper calls: 854 -> 703 -> 582 µs, under 800
    assert [busy.decide(0) for _ in range(PROBE_EVERY)][-1], "calls that got cheaper are probed again"


def test_a_probe_exactly_at_the_bound_counts_as_slow():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, on_thread(1500, 50), False)
    assert [policy.decide(0) for _ in range(PROBE_EVERY)][-1]
    policy.observe(0, on_thread(200, 200), True)  # the bound itself: not inline, and the next probe waits longer
    assert not policy.inline(0)
    assert [policy.decide(0) for _ in range(2 * PROBE_EVERY)].index(True) == 2 * PROBE_EVERY - 1
