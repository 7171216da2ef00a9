"""The decode loop: continuous batching of a causal LM on one torch device, on its own thread.

Every step (iteration-level scheduling, as in Orca and vLLM):

0. after a step in which sequences finished, with nobody waiting, the loop holds a moment
   (`join_wait_ms`, at most a tenth of a step) for new requests: a client that sends its next
   request as soon as one ends then joins this step's forward instead of waiting out a whole
   step it just missed;
1. cancelled sequences leave (waiting, prefilling or running): a client that went away stops
   costing compute at the next step;
2. if no prefill is under way, waiting sequences are admitted in arrival order while the
   running batch has a free slot (`max_sequences`), the KV bound holds with every sequence run
   to its `max_tokens` (`max_kv_tokens`), and their padded prompts fit `prefill_chunk_tokens`
   (generate/scheduler.py);
3. one forward (generate/fused.py) gives every running sequence its next token and reads the
   next prefill chunk (a prompt longer than the budget is read over several steps); finished
   sequences (stop token, stop string, max_tokens) leave, and when the admitted prompts are
   read, their first tokens are chosen and they join the running batch.

Decode and prefill share the forward because a forward's cost is mostly reading the weights:
a prefill forward of its own made each step that admits someone about 1.6x as long, for the
streams already running and for the first token alike. A long prompt delays running streams by
at most one chunk per step. Tokens go out through `emit` once per step (the service hands each
batch of events to asyncio with one call_soon_threadsafe).
The thread owns the model and the cache; other threads only `submit` and `cancel`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from hotswap.errors import BackendError, InvalidInput, QueueFull, ShuttingDown
from hotswap.generate.fused import fused_forward, use_packed_attention
from hotswap.generate.kvcache import PaddedBatch, PrefixCache, left_padded
from hotswap.generate.options import GenerationConfig
from hotswap.generate.sampling import choose
from hotswap.generate.scheduler import Prefill, admit
from hotswap.generate.sequence import Chunk, EngineStats, Observer, Sequence

log = logging.getLogger("hotswap.generate")


Emit = Callable[[list[tuple[Sequence, Chunk]]], None]


class GenerationEngine:
    """Continuous batching for one model on one device; `start()` runs the loop on its thread."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, config: GenerationConfig,
                 eos_ids: frozenset[int], pad_id: int, emit: Emit, observer: Observer | None = None) -> None:
        self.model, self.tokenizer, self.device, self.config = model, tokenizer, device, config
        use_packed_attention(model)
        self._eos, self._pad, self._emit = eos_ids, pad_id, emit
        self._observer = observer or Observer()
        self._cond = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._live = 0  # submitted and not finished (under _cond)
        self._closing = False
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._batch = PaddedBatch(model, device)
        self._prefill: Prefill | None = None
        self._prefix = PrefixCache() if config.prefix_cache else None
        self.stats = EngineStats()
        self._freed = 0  # running sequences that finished in the last step
        self._last_step_s = 0.0
        self._thread = threading.Thread(target=self._loop, name="hotswap-generate", daemon=True)

    # -- any thread ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, sequence: Sequence) -> None:
        """Queue a sequence, or refuse it now: 400 if it can never fit, 503 if the engine is full."""
        need = len(sequence.prompt) + sequence.params.max_tokens
        if need > self.config.max_kv_tokens:
            raise InvalidInput(f"the prompt ({len(sequence.prompt)} tokens) plus max_tokens "
                               f"({sequence.params.max_tokens}) exceed this model's KV cache "
                               f"({self.config.max_kv_tokens} tokens); ask for fewer tokens")
        with self._cond:
            if self._closing:
                raise ShuttingDown("the model is shutting down; retry")
            if self._live >= self.config.max_sequences + self.config.max_waiting:
                raise QueueFull(f"generation is at its limit ({self.config.max_sequences} running, "
                                f"{self.config.max_waiting} waiting); retry later")
            self._live += 1
            self._incoming.append(sequence)
            self._cond.notify()

    def cancel(self, sequence: Sequence) -> None:
        """The client went away: the sequence leaves the batch at the next step."""
        sequence.cancelled = True
        with self._cond:
            self._cond.notify()

    @property
    def live(self) -> int:
        """Sequences submitted and not finished."""
        with self._cond:
            return self._live

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the loop; sequences still in flight end with ShuttingDown."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # -- the engine thread -----------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closing and not (self._incoming or self._busy()):
                        self._cond.wait()
                    self._wait_for_joiners()
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                    closing = self._closing
                if closing:
                    self._fail_all(ShuttingDown("the model was unloaded or the server is shutting down"))
                    return
                started = time.perf_counter()
                try:
                    self._step()
                except Exception as exc:  # a device error ends the sequences it touched, not the engine
                    log.exception("generation step failed")
                    self._fail_running(BackendError(f"generation failed: {type(exc).__name__}: {exc}"))
                self._last_step_s = time.perf_counter() - started

    def _wait_for_joiners(self) -> None:
        """(Under _cond.) Slots freed by the last step and nobody waiting: hold the next step a moment
        (`join_wait_ms`, at most a tenth of a step) so clients sending their next request at once join it."""
        freed, self._freed = self._freed, 0
        if not freed or self._waiting or not self._running:
            return
        deadline = time.perf_counter() + min(self.config.join_wait_ms / 1000, self._last_step_s / 10)
        while not self._closing and len(self._incoming) < freed:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _busy(self) -> bool:
        return bool(self._waiting or self._running or self._prefill)

    def _step(self) -> None:
        events: list[tuple[Sequence, Chunk]] = []
        self._drop_cancelled(events)
        if self._prefill is None:
            self._prefill = self._admit()
        if self._running or self._prefill is not None:
            self._forward(events)
        self.stats.steps += 1
        if events:
            self._emit(events)
        self._observer.state(len(self._running), len(self._waiting) + len(self._incoming), self._batch.slots,
                             self._batch.nbytes)

    def _drop_cancelled(self, events: list[tuple[Sequence, Chunk]]) -> None:
        for seq in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(seq)
            self._end(seq, "cancelled", events)
        keep = [i for i, seq in enumerate(self._running) if not seq.cancelled]
        if len(keep) < len(self._running):
            for seq in self._running:
                if seq.cancelled:
                    self._end(seq, "cancelled", events)
            self._running = [self._running[i] for i in keep]
            self._batch.keep(keep)
        if self._prefill is not None and all(s.cancelled for s in self._prefill.sequences):
            for seq in self._prefill.sequences:
                self._end(seq, "cancelled", events)
            self._prefill = None

    def _admit(self) -> Prefill | None:
        prefix = self._prefix
        group = admit(self._waiting, self._running, self._batch.columns, self.config,
                      lambda seq: len(prefix.ids) if prefix is not None and prefix.matches(seq.prompt) else 0)
        if not group:
            return None
        self.stats.prompt_tokens += sum(len(s.prompt) for s in group)
        batch = PaddedBatch(self.model, self.device)
        skip = 0
        if self._prefix is not None:
            for seq in group:
                self._prefix.learn(seq.prompt, self.model, self.device)
            if all(self._prefix.matches(s.prompt) for s in group):
                skip = len(self._prefix.ids)  # read once, shared: only the rest of each prompt is prefilled
                self._prefix.seed(batch, len(group))
                self.stats.prefix_hits += len(group)
        ids, mask = left_padded([s.prompt[skip:] for s in group], self._pad, self.device)
        chunk = max(1, self.config.prefill_chunk_tokens // len(group))
        return Prefill(group, batch, ids, mask, chunk)

    def _forward(self, events: list[tuple[Sequence, Chunk]]) -> None:
        """One forward: a token for every running sequence and the next chunk of the prefill, if any."""
        pre, running = self._prefill, self._running
        ids = mask = None
        if pre is not None:
            ids, mask = pre.ids[:, pre.offset:pre.offset + pre.chunk], pre.mask[:, pre.offset:pre.offset + pre.chunk]
            pre.offset += pre.chunk
        joining = pre.sequences if pre is not None and pre.offset >= pre.ids.shape[1] else []
        decoded, read = fused_forward(self.model, self._batch, [s.tokens[-1] for s in running],
                                      pre.batch if pre is not None else None, ids, mask, bool(joining))
        logits = decoded if read is None else torch.cat([decoded, read]) if running else read
        tokens = choose(logits, [s.sampler for s in [*running, *joining]])
        now = time.perf_counter()
        for seq, token in zip(running, tokens, strict=False):
            self._observer.token_gap(now - seq.last_token_at)
            self._accept(seq, token, now, events)
        keep = [i for i, s in enumerate(running) if s.finish is None]
        if len(keep) < len(running):
            self._freed = len(running) - len(keep)
            self._running = [running[i] for i in keep]
            self._batch.keep(keep)
        if pre is not None and joining:
            self._prefill = None
            self._join(pre, tokens[len(running):], now, events)

    def _join(self, pre: Prefill, tokens: list[int], now: float, events: list[tuple[Sequence, Chunk]]) -> None:
        """A prefill is read: its first tokens go out and its sequences join the running batch."""
        for seq, token in zip(pre.sequences, tokens, strict=True):
            if seq.cancelled:
                self._end(seq, "cancelled", events)
            else:
                self._observer.first_token(now - seq.submitted)
                self._accept(seq, token, now, events)
        joining = [i for i, s in enumerate(pre.sequences) if s.finish is None]
        if joining:
            pre.batch.keep(joining)
            self._batch.merge(pre.batch)
            self._running.extend(pre.sequences[i] for i in joining)

    def _accept(self, seq: Sequence, token: int, now: float, events: list[tuple[Sequence, Chunk]]) -> None:
        seq.tokens.append(token)
        seq.last_token_at = now
        self.stats.generated_tokens += 1
        self._observer.tokens(1)
        finish = None
        if token in seq.params.stop_token_ids or (token in self._eos and not seq.params.ignore_eos):
            finish = "stop"
        else:
            seq.text.push(token)
            if seq.text.stopped:
                finish = "stop"
        if finish is None and len(seq.tokens) >= seq.params.max_tokens:
            finish = "length"
        if finish is not None:
            self._end(seq, finish, events)
            return
        piece = seq.text.take(final=False)
        if piece:
            events.append((seq, Chunk(piece, None, len(seq.prompt), len(seq.tokens))))

    def _end(self, seq: Sequence, finish: str, events: list[tuple[Sequence, Chunk]],
             error: Exception | None = None) -> None:
        seq.finish = finish
        if finish == "cancelled":  # counted here: only a sequence that was still live
            self.stats.cancelled += 1
            self._observer.cancelled()
        events.append((seq, Chunk(seq.text.take(final=True), finish, len(seq.prompt), len(seq.tokens), error)))
        with self._cond:
            self._live -= 1

    def _fail_running(self, error: Exception) -> None:
        """A step failed: its sequences get the error; the batch starts empty; waiting ones stay."""
        events: list[tuple[Sequence, Chunk]] = []
        failed = [*self._running, *(self._prefill.sequences if self._prefill else [])]
        for seq in failed:
            if seq.finish is None:
                self._end(seq, "error", events, error)
        self._running, self._prefill = [], None
        self._batch = PaddedBatch(self.model, self.device)
        if events:
            self._emit(events)

    def _fail_all(self, error: Exception) -> None:
        self._fail_running(error)
        events: list[tuple[Sequence, Chunk]] = []
        with self._cond:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
        for seq in self._waiting:
            self._end(seq, "error", events, error)
        self._waiting.clear()
        if events:
            self._emit(events)
