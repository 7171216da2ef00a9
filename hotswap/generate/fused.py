"""One forward per engine step: the running batch's decode tokens and a prefill chunk, packed together.

On a small model a forward's cost is mostly reading the weights once (on a CPU a 1-token forward
costs most of a 20-token one), so reading new prompts in a forward of their own, between decode
steps, nearly doubles the step that admits them. Here the step's tokens are packed into one row
of `[1, decode rows + prefill rows x chunk width]`: the linear layers (projections, MLP, LM head)
run once over all of them, and only attention is split, per layer, into the two batches it
belongs to:

- decode: row r's one query against row r of the running `PaddedBatch`, whose cache gets the
  new key and value in a new column (as a separate decode step would);
- prefill: the chunk's left-padded queries against the prefilling `PaddedBatch`, causal within
  the chunk (as a separate prefill forward would).

So every sequence sees exactly the keys and positions it would see in its own forward. This
needs the model's attention to go through transformers' attention interface and its cache's
`update` (every transformers decoder does in 5.x); the engine registers the function below as
the model's attention implementation, and it behaves as `sdpa` for any other forward.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hotswap.errors import BackendError, BackendUnavailable
from hotswap.generate.kvcache import PaddedBatch, left_padded

IMPLEMENTATION = "hotswap_packed"

# The step being run on this thread. Not passed down as a keyword argument: some decoders' layers
# do not hand their keyword arguments on to attention (StableLM's), and their attention would then
# run plain sdpa over the whole packed row, silently wrong.
_current = threading.local()


class PackedStep:
    """One step's layout, passed to the model as its cache: `update` files each part's new keys
    and values into its own batch, and `attention` reads them back per part."""

    def __init__(self, running: PaddedBatch, decode_rows: int, prefill: PaddedBatch | None, prefill_rows: int,
                 width: int, prefill_mask: torch.Tensor | None) -> None:
        self.running, self.decode_rows = running, decode_rows
        self.prefill, self.prefill_rows, self.width = prefill, prefill_rows, width
        self.updated, self.attended = 0, 0  # layers whose keys were filed, and whose attention ran here
        device = running.device
        masks: list[torch.Tensor] = []
        if decode_rows:
            running.mask = torch.cat([running.mask, running.mask.new_ones((decode_rows, 1))], dim=1)
            # [rows, 1, 1, columns]: each decode query sees its row's real columns, its new one included.
            masks.append(running.mask.bool()[:, None, None, :])
        if prefill is not None and prefill_mask is not None:
            prefill.mask = torch.cat([prefill.mask, prefill_mask], dim=1) if prefill.columns else prefill_mask
            masks.append(_chunk_mask(prefill.mask, width, device))
        self.decode_mask = masks[0] if decode_rows else None
        self.prefill_mask = masks[-1] if prefill is not None else None

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, **_: Any) -> tuple[Any, Any]:
        """keys, values [1, kv_heads, tokens, head_dim] in packed order: appended to their batches."""
        self.updated += 1
        rows = self.decode_rows
        if rows:
            _append(self.running, layer_idx, keys[0, :, :rows].transpose(0, 1).unsqueeze(2),
                    values[0, :, :rows].transpose(0, 1).unsqueeze(2))
        if self.prefill is not None:
            _append(self.prefill, layer_idx, _unpack(keys[0, :, rows:], self.prefill_rows, self.width),
                    _unpack(values[0, :, rows:], self.prefill_rows, self.width))
        return keys, values

    def attention(self, module: Any, query: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """query [1, heads, tokens, head_dim] -> output [1, tokens, heads, head_dim], packed order;
        `kwargs` (scaling, ...) go to sdpa as the model gave them."""
        self.attended += 1
        rows, layer, parts = self.decode_rows, module.layer_idx, []
        if rows:
            batch = self.running.layers[layer]
            q = query[0, :, :rows].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, head_dim]
            out, _ = sdpa_attention_forward(module, q, batch.keys, batch.values, self.decode_mask, **kwargs)
            parts.append(out.reshape(rows, *out.shape[2:]))
        if self.prefill is not None:
            batch = self.prefill.layers[layer]
            q = _unpack(query[0, :, rows:], self.prefill_rows, self.width)  # [rows, heads, width, head_dim]
            out, _ = sdpa_attention_forward(module, q, batch.keys, batch.values, self.prefill_mask, **kwargs)
            parts.append(out.reshape(-1, *out.shape[2:]))
        return torch.cat(parts).unsqueeze(0) if len(parts) > 1 else parts[0].unsqueeze(0)


def fused_forward(model: Any, running: PaddedBatch, tokens: list[int], prefill: PaddedBatch | None,
                  ids: torch.Tensor | None, mask: torch.Tensor | None,
                  last_chunk: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode `tokens` (one per running row) and read the chunk `ids`/`mask` [rows, width] into
    `prefill`, in one forward: next-token logits of every running row, and of every prefill row
    when `last_chunk` (an earlier chunk's are never used: the LM head is skipped for them)."""
    rows = len(tokens)
    width = ids.shape[1] if ids is not None else 0
    prefill_rows = ids.shape[0] if ids is not None else 0
    device = running.device
    parts, positions = [], []
    if rows:
        parts.append(torch.tensor(tokens, dtype=torch.long, device=device))
        positions.append(running.mask.sum(dim=1))  # each row's next position: its real tokens so far
    if ids is not None and mask is not None and prefill is not None:
        full = torch.cat([prefill.mask, mask], dim=1) if prefill.columns else mask
        parts.append(ids.reshape(-1))
        positions.append((full.cumsum(-1) - 1).clamp(min=0)[:, -width:].reshape(-1))
    step = PackedStep(running, rows, prefill if ids is not None else None, prefill_rows, width, mask)
    # Logits only where a next token is chosen: each decode token, each prefill row's last column.
    keep = torch.arange(rows, device=device)
    if prefill_rows and last_chunk:
        keep = torch.cat([keep, rows + torch.arange(1, prefill_rows + 1, device=device) * width - 1])
    _current.step = step
    try:
        out = model(input_ids=torch.cat(parts).unsqueeze(0), position_ids=torch.cat(positions).unsqueeze(0),
                    attention_mask=_NO_MASK, use_cache=True, logits_to_keep=keep, **{running.cache_arg: step})
    finally:
        _current.step = None
    if step.attended != step.updated or not step.updated:
        raise BackendError(f"{type(model).__name__} did not attend through the packed step ({step.updated} layers "
                           f"cached, {step.attended} attended there): its attention bypasses transformers' "
                           "attention interface, so one fused forward cannot serve it")
    logits = out.logits[0]
    return logits[:rows], (logits[rows:] if prefill_rows and last_chunk else None)


def verify_fused(model: Any, device: torch.device, pad_id: int) -> None:
    """Refuse (BackendUnavailable) a model whose fused step does not give the logits of the two
    forwards it replaces: a decode step of two left-padded rows and a prompt read on its own. An
    architecture whose attention or cache does not go through transformers' interfaces fails here,
    at load, instead of answering wrongly."""
    use_packed_attention(model)
    running, fresh = left_padded([[1, 2, 3, 4, 5], [6, 7]], pad_id, device), left_padded([[8, 9, 10]], pad_id, device)
    with torch.inference_mode():
        separate, fused = PaddedBatch(model, device), PaddedBatch(model, device)
        separate.forward(*running)
        fused.forward(*running)
        want = torch.cat([separate.decode([11, 12]), PaddedBatch(model, device).forward(*fresh)])
        try:
            decoded, read = fused_forward(model, fused, [11, 12], PaddedBatch(model, device), *fresh)
        except BackendError as exc:
            raise BackendUnavailable(str(exc)) from None
        got = decoded if read is None else torch.cat([decoded, read])
        error = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    if not error <= 1e-3 + 1e-2 * want.abs().max().item():
        raise BackendUnavailable(f"{type(model).__name__}: one fused forward differs from separate decode and "
                                 f"prefill forwards by {error:.3g} in the logits; it cannot be served")


def use_packed_attention(model: Any) -> None:
    """Make `model` attend through `_attention` (sdpa for forwards that are not packed steps)."""
    AttentionInterface.register(IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    if model.config._attn_implementation != IMPLEMENTATION:
        model.set_attn_implementation(IMPLEMENTATION)


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    step: PackedStep | None = getattr(_current, "step", None)
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return step.attention(module, query, **kwargs), None


# A 4-D mask makes transformers skip building its own (each part's mask is built by PackedStep).
_NO_MASK = torch.ones((1, 1, 1, 1), dtype=torch.bool)


def _append(batch: PaddedBatch, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    layer = batch.layers[layer_idx]
    if not layer.is_initialized:
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    else:
        layer.keys = torch.cat([layer.keys, keys], dim=2)
        layer.values = torch.cat([layer.values, values], dim=2)


def _unpack(states: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """[heads, rows x width, head_dim] -> [rows, heads, width, head_dim]."""
    return states.reshape(states.shape[0], rows, width, states.shape[-1]).transpose(0, 1)


def _chunk_mask(full: torch.Tensor, width: int, device: torch.device) -> torch.Tensor:
    """[rows, 1, width, columns]: a chunk's queries see their row's real columns up to their own;
    a padding query sees itself only, so that its (unused) output stays finite."""
    columns = full.shape[1]
    query_column = torch.arange(columns - width, columns, device=device)[:, None]
    causal = torch.arange(columns, device=device)[None, :] <= query_column  # [width, columns]
    seen = full.bool()[:, None, :] & causal[None]
    itself = torch.arange(columns, device=device)[None, :] == query_column
    return (seen | itself[None])[:, None]
