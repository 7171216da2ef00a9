"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p and a per-request seed.

Greedy rows take the argmax on the device. Sampled rows move their logits to the CPU and draw
with the request's own `torch.Generator`: a seeded request gives the same tokens whatever else
runs in the batch, and on any device whose logits agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hotswap.generate.options import SamplingParams


@dataclass
class Sampler:
    """One sequence's token choice: its params and its random generator (None when greedy)."""

    params: SamplingParams
    generator: torch.Generator | None = field(default=None)

    @classmethod
    def for_params(cls, params: SamplingParams) -> Sampler:
        if params.greedy:
            return cls(params)
        generator = torch.Generator(device="cpu")
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        return cls(params, generator)


def choose(logits: Any, samplers: list[Sampler]) -> list[int]:
    """The next token of each row of `logits` [rows, vocab], one sampler per row."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, sampler in enumerate(samplers):
        if sampler.generator is not None:
            chosen[row] = _sample(logits[row].float().cpu(), sampler.params, sampler.generator)
    return chosen


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        cut = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(cut, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
