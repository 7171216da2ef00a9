"""Admission: which waiting sequences join the batch next, and how their prompts are read.

First come, first served: the head of the queue waits for a slot (`max_sequences`) and for KV
memory (`max_kv_tokens`, counted at the batch's peak with every sequence run to its
`max_tokens`), and nobody overtakes it. Prompts admitted together must fit one step's prefill
budget once padded (`prefill_chunk_tokens`); a single longer prompt is read over several steps
in chunks of that budget, so running streams wait at most one chunk per step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hotswap.generate.options import GenerationConfig

if TYPE_CHECKING:
    from hotswap.generate.kvcache import PaddedBatch
    from hotswap.generate.sequence import Sequence


@dataclass
class Prefill:
    """Prompts being read into their own cache before they join the running batch."""

    sequences: list[Sequence]
    batch: PaddedBatch
    ids: Any  # [rows, width] left-padded prompt ids, and their 0/1 mask
    mask: Any
    chunk: int  # columns read per step
    offset: int = 0


def admit(waiting: deque[Sequence], running: list[Sequence], columns: int, config: GenerationConfig,
          cached: Callable[[Sequence], int] = lambda seq: 0) -> list[Sequence]:
    """Take the next group from the head of `waiting` (empty: nobody may join now).

    `cached(seq)` is how many of its prompt tokens are already in the prefix cache: only the rest
    costs prefill, and a group shares one value (its rows are seeded from the prefix, or none is).
    """
    group: list[Sequence] = []
    budget = config.prefill_chunk_tokens
    while waiting and len(running) + len(group) < config.max_sequences:
        head = waiting[0]
        candidate = [*group, head]
        width = max(len(s.prompt) for s in candidate)
        if group and (cached(head) != cached(group[0])
                      or (width - cached(head)) * len(candidate) > budget):
            break  # more prompts together would overrun one step's prefill budget
        if not kv_fits([*running, *candidate], max(columns, width), config.max_kv_tokens):
            break  # the head waits for memory; nobody overtakes it
        group.append(waiting.popleft())
    return group


def kv_fits(sequences: list[Sequence], columns: int, max_kv_tokens: int) -> bool:
    """Padded slots at the batch's peak (every sequence run to max_tokens) within `max_kv_tokens`."""
    remaining = max(s.params.max_tokens - len(s.tokens) for s in sequences)
    return len(sequences) * (columns + remaining) <= max_kv_tokens
