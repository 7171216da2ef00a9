"""What the decode loop keeps per request, and what it reports: sequences, chunks, totals, hooks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hotswap.generate.options import SamplingParams
from hotswap.generate.sampling import Sampler
from hotswap.generate.text import TextStream


@dataclass(frozen=True)
class Chunk:
    """What one step produced for one sequence: new text, and why it ended (None: it goes on)."""

    text: str
    finish: str | None
    prompt_tokens: int
    completion_tokens: int
    error: Exception | None = None


@dataclass(eq=False)
class Sequence:
    """One request in the engine. `handle` is the caller's (its queue); the engine never reads it."""

    prompt: list[int]
    params: SamplingParams
    text: TextStream
    handle: Any = None
    sampler: Sampler = field(init=False)
    tokens: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    last_token_at: float = 0.0
    finish: str | None = None
    cancelled: bool = False  # set by any thread; read by the engine at its next step

    def __post_init__(self) -> None:
        self.sampler = Sampler.for_params(self.params)


@dataclass
class EngineStats:
    """Running totals, read by tests and metadata (the metrics have the same numbers per series)."""

    steps: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cancelled: int = 0
    prefix_hits: int = 0  # sequences prefilled from the shared prefix's cached keys and values


class Observer:
    """Hooks the metrics implement (hotswap.generate.metrics); the base does nothing."""

    def first_token(self, seconds: float) -> None: ...
    def token_gap(self, seconds: float) -> None: ...
    def tokens(self, count: int) -> None: ...
    def cancelled(self) -> None: ...
    def state(self, running: int, waiting: int, slots: int, kv_bytes: int) -> None: ...
