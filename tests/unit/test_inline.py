"""The inline decision (serve/inline.py): a running average of call times against inline_max_us."""

from __future__ import annotations

from hotswap.models.pipeline import StageTimes
from hotswap.serve.inline import InlinePolicy


def took(us: float) -> StageTimes:
    # Split over the three stages: the decision is on the whole call.
    return StageTimes(us / 4e6, us / 2e6, us / 4e6)


def test_unmeasured_instances_are_never_inline():
    policy = InlinePolicy(200, 2, allowed=True)
    assert not policy.inline(0) and not policy.inline(1)


def test_a_call_under_the_bound_goes_inline_for_its_own_instance_only():
    policy = InlinePolicy(200, 2, allowed=True)
    policy.observe(1, took(199))
    assert policy.inline(1) and not policy.inline(0)
    policy.observe(0, took(200))
    assert not policy.inline(0), "the bound itself is not under it"


def test_calls_that_grow_send_it_back_to_its_thread_through_the_running_average():
    policy = InlinePolicy(200, 1, allowed=True)
    policy.observe(0, took(100))
    policy.observe(0, took(500))  # 100 + 0.2 * 400 = 180: one slow call is not enough
    assert policy.inline(0)
    policy.observe(0, took(500))  # 180 + 0.2 * 320 = 244
    assert not policy.inline(0)


def test_not_allowed_or_zero_never_inline():
    for policy in (InlinePolicy(200, 1, allowed=False), InlinePolicy(0, 1, allowed=True)):
        policy.observe(0, took(0.001))
        assert not policy.inline(0)
