"""A left-padded batch of sequences in one transformers DynamicCache, with its attention mask.

The running batch is one tensor per layer, [sequences, kv_heads, columns, head_dim], and a 0/1
mask [sequences, columns]: sequences are right-aligned (left padding), so a decode step appends
one column for everyone. Joining sequences are left-padded (or the batch is) to the longer
length and concatenated; leaving sequences are index-selected away and the columns that became
padding for every row are cut from the left. Positions come from the mask (cumsum - 1), as
transformers' own `generate` computes them, so a padded row sees exactly its own tokens at its
own positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PaddedBatch:
    """Sequences' keys and values in one cache; row i is the i-th sequence."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self._model = model
        self.device = device
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache = DynamicCache(config=model.config)
        if any(type(layer) is not DynamicLayer for layer in self.cache.layers):
            kinds = sorted({type(layer).__name__ for layer in self.cache.layers})
            raise ValueError(f"this model's cache has {', '.join(kinds)} layers; the padded batch supports "
                             "full-attention (DynamicLayer) models only")
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    @property
    def layers(self) -> list[Any]:
        """The cache's layers (DynamicLayer: `keys`, `values` [rows, kv_heads, columns, head_dim])."""
        return list(self.cache.layers)

    @property
    def nbytes(self) -> int:
        """Bytes the keys and values take."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers
                   if getattr(layer, "keys", None) is not None)

    @property
    def slots(self) -> int:
        """KV token slots held: rows x columns, padding included (what the memory bound counts)."""
        return self.rows * self.columns

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run `input_ids` [rows, n] (0/1 `mask` [rows, n]) through the model; the last position's logits."""
        full = torch.cat([self.mask, mask], dim=1) if self.columns else mask
        positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a warning).
        cache = {self.cache_arg: self.cache}
        out = self._model(input_ids=input_ids, attention_mask=full, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **cache)
        self.mask = full
        return out.logits[:, -1, :]

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One decode step: each row's last token in, next-token logits out."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        return self.forward(ids, torch.ones_like(ids))

    def merge(self, other: PaddedBatch) -> None:
        """Append `other`'s rows below this batch's, right-aligned."""
        if self.rows == 0:
            self.cache, self.mask = other.cache, other.mask
            return
        width = max(self.columns, other.columns)
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)], dim=0)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)], dim=0)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop columns that are padding for every row left."""
        if not rows:
            self.cache = DynamicCache(config=self._model.config)
            self.mask = self.mask[:0, :0]
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        for layer in self.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.mask = mask[:, start:]


class PrefixCache:
    """The keys and values of one prompt prefix that requests share (a chat template's system
    block), computed once: a prompt that starts with it is prefilled from its end.

    The prefix is learnt, not configured. A prompt that misses it but shares at least
    `min_tokens` with it shrinks it to the shared part: causal attention makes the keys of a
    prefix of the prefix its first columns, so no forward is needed, and the prefix settles on
    what all prompts share (the template's system block) instead of flipping between longer
    ones two prompts happen to share ("...user\nWhat is"), each flip a forward and a miss.
    Otherwise the longest common prefix with the previous prompt (at least `min_tokens`, and short
    of the new prompt's last token) becomes the new one. Row i of a batch seeded from it holds the
    prefix, then left padding, then the rest of its prompt: positions come from the mask, so the
    hole is invisible to the model.
    """

    def __init__(self, min_tokens: int = 16) -> None:
        self.min_tokens = min_tokens
        self.ids: tuple[int, ...] = ()
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._last: list[int] = []
        self.forwards = 0  # prefixes computed (a shrink costs none)

    def matches(self, prompt: list[int]) -> bool:
        size = len(self.ids)
        return 0 < size < len(prompt) and tuple(prompt[:size]) == self.ids

    def learn(self, prompt: list[int], model: Any, device: torch.device) -> None:
        """Remember `prompt`; on a miss, shrink the cached prefix or cache a new one."""
        if not self.matches(prompt):
            shared = _common(prompt, self.ids)
            if shared >= self.min_tokens:
                self.ids = self.ids[:shared]
                self._layers = [(keys[:, :, :shared], values[:, :, :shared]) for keys, values in self._layers]
            elif self._last and (common := _common(prompt, self._last)) >= self.min_tokens:
                batch = PaddedBatch(model, device)
                ids = torch.tensor([prompt[:common]], dtype=torch.long, device=device)
                batch.forward(ids, torch.ones_like(ids))
                self.ids = tuple(prompt[:common])
                self._layers = [(layer.keys, layer.values) for layer in batch.layers]
                self.forwards += 1
        self._last = prompt

    def seed(self, batch: PaddedBatch, rows: int) -> None:
        """Start an empty `batch` of `rows` sequences with the prefix in every row."""
        for layer, (keys, values) in zip(batch.layers, self._layers, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys = keys.expand(rows, -1, -1, -1).contiguous()
            layer.values = values.expand(rows, -1, -1, -1).contiguous()
        batch.mask = torch.ones((rows, len(self.ids)), dtype=torch.long, device=batch.device)


def _common(prompt: list[int], other: Sequence[int]) -> int:
    """Tokens `prompt` shares with `other` from the start, short of `prompt`'s last (it must be prefilled)."""
    common, most = 0, min(len(prompt) - 1, len(other))
    while common < most and prompt[common] == other[common]:
        common += 1
    return common


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [n, longest] and mask, each prompt right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _pad(states: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - states.shape[2]
    if missing == 0:
        return states
    zeros = states.new_zeros((states.shape[0], states.shape[1], missing, states.shape[3]))
    return torch.cat([zeros, states], dim=2)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
