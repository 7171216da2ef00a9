"""The fused step (generate/fused.py) against the two forwards it replaces: a decode step of the running
batch and a prefill chunk of new prompts, each on its own. Logits, cache contents and masks must
agree, with rows of different lengths (left padding) on both sides and a chunk that starts mid-prompt."""

from __future__ import annotations

import pytest
import torch

from hotswap.generate.fused import fused_forward, use_packed_attention
from hotswap.generate.kvcache import PaddedBatch, PrefixCache, left_padded
from hotswap.generate.model import load_model

pytestmark = pytest.mark.slow

RUNNING = [list(range(300, 320)), list(range(400, 407))]
NEW = [list(range(500, 513)), list(range(600, 604)), list(range(700, 709))]


@pytest.fixture(scope="module")
def loaded(folder):
    loaded = load_model(folder, "cpu", "float32", None)
    use_packed_attention(loaded.model)
    return loaded


def batch_of(loaded, prompts: list[list[int]]) -> PaddedBatch:
    batch = PaddedBatch(loaded.model, loaded.device)
    ids, mask = left_padded(prompts, loaded.pad_id, loaded.device)
    batch.forward(ids, mask)
    return batch


def copy_of(loaded, batch: PaddedBatch) -> PaddedBatch:
    twin = PaddedBatch(loaded.model, loaded.device)
    for mine, theirs in zip(twin.layers, batch.layers, strict=True):
        if theirs.is_initialized:
            mine.lazy_initialization(theirs.keys, theirs.values)
            mine.keys, mine.values = theirs.keys.clone(), theirs.values.clone()
    twin.mask = batch.mask.clone()
    return twin


def assert_same_batch(a: PaddedBatch, b: PaddedBatch) -> None:
    assert torch.equal(a.mask, b.mask)
    real = a.mask.bool()[:, None, :, None]  # padding columns may hold anything: never attended
    for x, y in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(x.keys * real, y.keys * real, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x.values * real, y.values * real, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("start", [0, 5])
def test_one_fused_forward_equals_a_decode_step_and_a_prefill_chunk(loaded, start):
    """start 0: the new prompts' first chunk; 5: a later chunk, on top of the first 5 columns."""
    with torch.inference_mode():
        running = batch_of(loaded, RUNNING)
        running.decode([11, 12])  # a decode step already taken: the newest column is a generated token
        ids, mask = left_padded(NEW, loaded.pad_id, loaded.device)
        prefill = PaddedBatch(loaded.model, loaded.device)
        if start:
            prefill.forward(ids[:, :start], mask[:, :start])
        want_running, want_prefill = copy_of(loaded, running), copy_of(loaded, prefill)
        want_decoded = want_running.decode([21, 22])
        want_read = want_prefill.forward(ids[:, start:], mask[:, start:])
        decoded, read = fused_forward(loaded.model, running, [21, 22], prefill, ids[:, start:], mask[:, start:])
    assert read is not None
    torch.testing.assert_close(decoded, want_decoded, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(read, want_read, atol=1e-4, rtol=1e-4)
    assert decoded.argmax(-1).tolist() == want_decoded.argmax(-1).tolist()
    assert read.argmax(-1).tolist() == want_read.argmax(-1).tolist()
    assert_same_batch(running, want_running)
    assert_same_batch(prefill, want_prefill)


def test_decode_only_and_prefill_only_steps(loaded):
    with torch.inference_mode():
        running = batch_of(loaded, RUNNING)
        want = copy_of(loaded, running).decode([5, 6])
        decoded, read = fused_forward(loaded.model, running, [5, 6], None, None, None)
        assert read is None
        torch.testing.assert_close(decoded, want, atol=1e-4, rtol=1e-4)
        ids, mask = left_padded(NEW, loaded.pad_id, loaded.device)
        empty = PaddedBatch(loaded.model, loaded.device)
        want_read = batch_of(loaded, NEW).forward(torch.tensor([[1]] * 3), torch.ones((3, 1), dtype=torch.long))
        decoded, read = fused_forward(loaded.model, empty, [], (fresh := PaddedBatch(loaded.model, loaded.device)),
                                      ids, mask)
        assert decoded.shape[0] == 0 and read is not None
        # Read in one fused forward, then the same next token as the separate path's.
        again = fused_forward(loaded.model, empty, [], fresh, torch.tensor([[1]] * 3),
                              torch.ones((3, 1), dtype=torch.long))[1]
        assert again is not None
        torch.testing.assert_close(again, want_read, atol=1e-4, rtol=1e-4)


def test_the_prefix_cache_shrinks_to_what_prompts_share_without_a_forward(loaded):
    """Two prompts sharing 20 tokens make a 20-token prefix; a third sharing 17 of them shrinks it
    to 17 (no forward), with the keys a forward of those 17 tokens gives; a prompt sharing less than
    `min_tokens` with it learns anew from the previous prompt."""
    head = list(range(900, 920))
    a, b, c = head + [1, 2, 3], head + [4, 5], head[:17] + [6, 7, 8]
    d = head[:17] + [6, 7, 9, 10]
    cache = PrefixCache(min_tokens=16)
    with torch.inference_mode():
        for prompt in (a, b):
            cache.learn(prompt, loaded.model, loaded.device)
        assert cache.ids == tuple(head) and cache.forwards == 1
        cache.learn(c, loaded.model, loaded.device)
        assert cache.ids == tuple(head[:17]) and cache.forwards == 1 and cache.matches(d)
        seeded = PaddedBatch(loaded.model, loaded.device)
        cache.seed(seeded, 2)
        assert_same_batch(seeded, batch_of(loaded, [head[:17]] * 2))
        other = list(range(1000, 1030))
        for prompt in (other + [1], other + [2]):
            cache.learn(prompt, loaded.model, loaded.device)
        assert cache.ids == tuple(other) and cache.forwards == 2
