"""The decode loop itself, without HTTP: continuous batching must not change a single greedy token.

Padding bugs (a wrong position, a pad column attended, a cache row misaligned after a sequence
leaves) show up exactly when sequences of different lengths share the batch, join it mid-way
and leave it at different steps; each case is compared with transformers' greedy `generate`.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from hotswap.generate.engine import GenerationEngine
from hotswap.generate.model import load_model
from hotswap.generate.options import GenerationConfig, SamplingParams
from hotswap.generate.sequence import Chunk, Sequence
from hotswap.generate.text import TextStream

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France? Answer in one word.",
             "Write a short poem about the sea, the wind and the stars above the harbour at night.",
             "Hi", "List three colours."]
TOKENS = 20


@pytest.fixture(scope="module")
def loaded(folder):
    return load_model(folder, "cpu", "float32", None)


class Collector:
    """The engine's `emit`: chunks per sequence, and an event when each one ends."""

    def __init__(self) -> None:
        self.chunks: dict[int, list[Chunk]] = {}
        self.done = threading.Condition()

    def __call__(self, events: list[tuple[Sequence, Chunk]]) -> None:
        with self.done:
            for seq, chunk in events:
                self.chunks.setdefault(id(seq), []).append(chunk)
            self.done.notify_all()

    def wait(self, sequences: list[Sequence], timeout: float = 120) -> None:
        with self.done:
            assert self.done.wait_for(lambda: all(s.finish for s in sequences), timeout), "sequences did not end"


def engine_for(loaded, collector: Collector, **options) -> GenerationEngine:
    config = GenerationConfig(**{"max_sequences": 4, "prefill_chunk_tokens": 16, **options})
    engine = GenerationEngine(loaded.model, loaded.tokenizer.backend_tokenizer, loaded.device, config,
                              loaded.eos_ids, loaded.pad_id, collector)
    engine.start()
    return engine


def sequence(loaded, prompt: list[int], **params) -> Sequence:
    params = {"max_tokens": TOKENS, "temperature": 0.0, **params}
    return Sequence(prompt, SamplingParams(**params), TextStream(loaded.tokenizer.backend_tokenizer,
                                                                 params.get("stop", ())))


def wait_tokens(seq: Sequence, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(seq.tokens) < count and seq.finish is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.fixture(scope="module")
def expected(reference):
    prompts = [reference.chat_ids(q) for q in QUESTIONS]
    return prompts, [reference.greedy(p, TOKENS) for p in prompts]


def test_greedy_alone_equals_transformers(loaded, expected):
    prompts, wanted = expected
    collector = Collector()
    engine = engine_for(loaded, collector)
    try:
        for prompt, want in zip(prompts[:2], wanted[:2], strict=True):
            seq = sequence(loaded, prompt)
            engine.submit(seq)
            collector.wait([seq])
            assert seq.tokens == want
    finally:
        engine.close()


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_greedy_with_joins_leaves_and_chunked_prefill_equals_transformers(loaded, expected, reference, prefix_cache):
    """A runs alone; B and C (one prompt longer than a prefill chunk) join while A decodes; D joins
    after A and others have left at different steps: every sequence's tokens equal `generate`'s,
    whether B, C and D start from the cached keys of the chat template's shared system block or not."""
    prompts, wanted = expected
    collector = Collector()
    engine = engine_for(loaded, collector, prefix_cache=prefix_cache)
    a, b, c, d = (sequence(loaded, p, max_tokens=TOKENS - i) for i, p in enumerate(prompts))
    try:
        engine.submit(a)
        wait_tokens(a, 5)
        engine.submit(b)
        engine.submit(c)
        wait_tokens(b, 3)
        engine.submit(d)
        collector.wait([a, b, c, d])
    finally:
        engine.close()
    for seq, want in zip((a, b, c, d), wanted, strict=True):
        assert seq.tokens == want[:seq.params.max_tokens], reference.text(seq.tokens)
    assert len(prompts[1]) > 16, "B must be longer than one prefill chunk"
    assert engine.stats.prefix_hits == (3 if prefix_cache else 0)
    assert "".join(ch.text for ch in collector.chunks[id(a)]) == reference.text(wanted[0])


def test_seeded_sampling_repeats_whatever_runs_beside_it(loaded, expected):
    prompts, _ = expected
    collector = Collector()
    engine = engine_for(loaded, collector)
    try:
        alone = sequence(loaded, prompts[1], temperature=0.9, top_p=0.95, top_k=50, seed=7)
        engine.submit(alone)
        collector.wait([alone])
        crowd = [sequence(loaded, p, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
        again = sequence(loaded, prompts[1], temperature=0.9, top_p=0.95, top_k=50, seed=7)
        for seq in [crowd[0], again, *crowd[1:]]:
            engine.submit(seq)
        collector.wait([again, *crowd])
    finally:
        engine.close()
    assert again.tokens == alone.tokens


def test_a_cancelled_sequence_leaves_the_batch(loaded, expected):
    prompts, _ = expected
    collector = Collector()
    engine = engine_for(loaded, collector)
    try:
        long = sequence(loaded, prompts[0], max_tokens=400, ignore_eos=True)
        engine.submit(long)
        wait_tokens(long, 3)
        engine.cancel(long)
        collector.wait([long])
        generated = engine.stats.generated_tokens
        time.sleep(0.3)
        assert long.finish == "cancelled" and engine.stats.cancelled == 1
        assert engine.stats.generated_tokens == generated < 50  # nothing decoded after it left
        assert engine.live == 0
    finally:
        engine.close()


def test_torch_inference_mode_is_not_leaked(loaded):
    # The engine thread runs under inference_mode; the caller's thread must not be affected.
    assert not torch.is_inference_mode_enabled()


def test_a_request_sent_as_soon_as_another_ends_joins_the_very_next_step(loaded, expected):
    """Closed-loop clients: B ends, and its client's next request C (submitted from another thread as
    B's last chunk goes out, a moment later) is read in the next step's forward, not in the one after
    (join_wait_ms)."""
    prompts, _ = expected
    steps: dict[str, int] = {}
    engine: GenerationEngine | None = None

    class Relay(Collector):
        def __call__(self, events: list[tuple[Sequence, Chunk]]) -> None:
            super().__call__(events)
            assert engine is not None
            for seq, chunk in events:
                if seq is b and chunk.finish is not None:
                    steps["b_ended"] = engine.stats.steps
                    # The client's turnaround: a twentieth of a step, half what the engine waits at most.
                    threading.Timer(engine._last_step_s / 20, engine.submit, (c,)).start()
                if seq is c and "c_first" not in steps:
                    steps["c_first"] = engine.stats.steps

    collector = Relay()
    a = sequence(loaded, prompts[1], max_tokens=40, ignore_eos=True)
    b = sequence(loaded, prompts[2], max_tokens=3, ignore_eos=True)
    c = sequence(loaded, prompts[3], max_tokens=2, ignore_eos=True)
    engine = engine_for(loaded, collector, prefill_chunk_tokens=256, join_wait_ms=1000)
    try:
        engine.submit(a)
        wait_tokens(a, 2)
        engine.submit(b)
        collector.wait([b, c])
    finally:
        engine.close()
    assert steps["c_first"] == steps["b_ended"] + 1, steps
