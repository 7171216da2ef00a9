"""GenerationService: one generating model in the repository, as ModelSupervisor is for the others.

It walks the model's chain like backend selection does (first entry that probes and loads
wins; each skipped entry and its reason goes to the log, metadata and metrics), runs a
GenerationEngine on the winner's device, and turns the engine's thread-side events into
per-request asyncio queues: one `call_soon_threadsafe` per engine step for all sequences.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import SkippedEntry
from hotswap.backends.torch_backend import TorchBackend, TorchOptions
from hotswap.config import BackendEntry, ModelConfig
from hotswap.errors import BackendUnavailable, InvalidInput
from hotswap.generate.engine import GenerationEngine
from hotswap.generate.fused import verify_fused
from hotswap.generate.metrics import GenerationSeries
from hotswap.generate.model import LoadedModel, load_model, resolve_folder
from hotswap.generate.options import GENERATION_BACKEND, GenerationConfig, SamplingParams
from hotswap.generate.sequence import Chunk, Sequence
from hotswap.generate.text import TextStream
from hotswap.serve.metrics import Metrics, ModelSeries

log = logging.getLogger("hotswap.generate")


class GenerationService:
    """A generating model: start() loads it, stream() generates for one request."""

    def __init__(self, config: ModelConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False) -> None:
        assert config.generation is not None
        self.config = config
        self.options: GenerationConfig = config.generation
        self._registry, self._metrics, self._config_dir = registry, metrics, config_dir
        self.loaded: LoadedModel | None = None
        self.engine: GenerationEngine | None = None
        self.position = -1
        self.skipped: list[SkippedEntry] = []
        self.series: ModelSeries | None = None
        self.observer: GenerationSeries | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve the folder, walk the chain, start the engine; BackendUnavailable lists every reason."""
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        folder = await asyncio.to_thread(resolve_folder, self.config.source, self._config_dir)
        self.loaded = await asyncio.to_thread(self._walk_chain, folder)
        labels = {"model": self.config.name, "version": self.config.version, "backend": GENERATION_BACKEND,
                  "device": self.loaded.info["device"]}
        self.series = self._metrics.model_series(labels)
        self.series.load_seconds.set(time.perf_counter() - started)
        self.series.publish_backend({**self.loaded.info, "providers": ""}, self.position, self.skipped,
                                    self._memory_bytes)
        self.observer = GenerationSeries(self._metrics, labels, self.options.max_kv_tokens)
        tokenizer = self.loaded.tokenizer.backend_tokenizer  # the fast `tokenizers` object: cheap decode
        self._decoder = tokenizer
        self.engine = GenerationEngine(self.loaded.model, tokenizer, self.loaded.device, self.options,
                                       self.loaded.eos_ids, self.loaded.pad_id, self._emit, self.observer)
        self.engine.start()
        log.info("model %s generates on %s (chain entry #%d)", self.config.name, self.loaded.info["device"],
                 self.position)

    def _walk_chain(self, folder: Path) -> LoadedModel:
        for position, entry in enumerate(self.config.backends):
            reason, loaded = self._try(entry, folder)
            if loaded is not None:
                self.position = position
                return loaded
            self.skipped.append(SkippedEntry(position, entry.label(), reason))
            log.warning("model %s: chain entry #%d %s skipped: %s", self.config.name, position, entry.label(),
                        reason)
        reasons = "; ".join(f"#{s.position} {s.label}: {s.reason}" for s in self.skipped)
        raise BackendUnavailable(f"model {self.config.name}: no chain entry can generate ({reasons})", self.skipped)

    def _try(self, entry: BackendEntry, folder: Path) -> tuple[str, LoadedModel | None]:
        if entry.name != GENERATION_BACKEND:
            return (f"{entry.name} cannot generate: generation needs the torch backend's decode loop "
                    "(KV cache, continuous batching)"), None
        if GENERATION_BACKEND not in self._registry.available:
            return "the torch backend is not installed or failed to import", None
        options = TorchOptions.model_validate(entry.options)
        reason = TorchBackend.probe(options)
        if reason:
            return reason, None
        try:
            loaded = load_model(folder, options.device, options.dtype, options.threads)
            verify_fused(loaded.model, loaded.device, loaded.pad_id)
            return "", loaded
        except Exception as exc:  # the next entry may still load; the reason is reported
            return f"load failed: {type(exc).__name__}: {exc}", None

    def _memory_bytes(self) -> int | None:
        import torch

        device = self.loaded.device if self.loaded else None
        if device is None or device.type == "cpu" or not hasattr(torch, "accelerator"):
            return None
        try:
            return int(torch.accelerator.memory_allocated(device))
        except Exception:  # not every device reports memory
            return None

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Let running sequences finish (until the deadline), then stop the engine and free the model."""
        engine = self.engine
        if engine is not None:
            deadline = time.monotonic() + (drain_timeout_s or 0)
            while engine.live and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(engine.close)
        if self.series is not None:  # also after a start that failed once the model was loaded
            self.series.retire()
        if self.observer is not None:
            self.observer.retire()
        self.engine, self.loaded = None, None

    # -- requests --------------------------------------------------------------------
    def _emit(self, events: list[tuple[Sequence, Chunk]]) -> None:
        """Engine thread: hand one step's chunks to the event loop in one call."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_dispatch, events)

    def prompt_ids(self, text: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Token ids of a raw prompt, or of chat messages through the model's chat template."""
        if self.loaded is None:
            raise InvalidInput(f"model '{self.config.name}' is not loaded")
        tokenizer = self.loaded.tokenizer
        if messages is not None:
            if not tokenizer.chat_template:
                raise InvalidInput(f"model '{self.config.name}' has no chat template; use /v1/completions")
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if not isinstance(ids, list) else ids)
        else:
            ids = tokenizer(text or "", add_special_tokens=True)["input_ids"]
        if not ids:
            raise InvalidInput("the prompt is empty")
        if len(ids) > self.options.max_prompt_tokens:
            raise InvalidInput(f"the prompt has {len(ids)} tokens; this model takes at most "
                               f"{self.options.max_prompt_tokens} (generation.max_prompt_tokens)")
        return ids

    def submit(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Queue one request now (400 / 503 raised here, before any response is started)."""
        engine, observer = self.engine, self.observer
        if engine is None or observer is None:
            raise InvalidInput(f"model '{self.config.name}' is not loaded")
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        seq = Sequence(prompt, params, TextStream(self._decoder, params.stop), handle=queue)
        engine.submit(seq)
        observer.prompt.inc(len(prompt))
        return Generation(engine, observer, seq, queue)

    def metadata(self) -> dict:
        """v2 model metadata for a generating model: text in, text out, and what runs it."""
        info = self.loaded.info if self.loaded else {}
        entry = self.config.backends[self.position].label() if self.position >= 0 else ""
        return {
            "name": self.config.name, "versions": [self.config.version], "platform": "torch_generate",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}],
            "backend": {"name": GENERATION_BACKEND, "entry": entry, "chain_position": self.position, **info},
            "skipped": [s.as_dict() for s in self.skipped],
            "generation": self.options.model_dump(),
        }


class Generation:
    """One submitted request: iterate `chunks()`; leaving before the last chunk cancels the sequence."""

    def __init__(self, engine: GenerationEngine, observer: GenerationSeries, seq: Sequence,
                 queue: asyncio.Queue[Chunk]) -> None:
        self._engine, self._observer, self._seq, self._queue = engine, observer, seq, queue
        self.prompt_tokens = len(seq.prompt)
        self._open = True

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Chunks until one has `finish`; an engine error is raised (BackendError, ShuttingDown)."""
        try:
            while self._open:
                chunk = await self._queue.get()
                if chunk.finish is not None:
                    self._open = False
                if chunk.error is not None:
                    raise chunk.error
                yield chunk
        finally:
            self.cancel()

    def cancel(self) -> None:
        """The client went away (or the task was cancelled): the sequence leaves at the next step."""
        if self._open:
            self._open = False
            self._engine.cancel(self._seq)


def _dispatch(events: list[tuple[Sequence, Chunk]]) -> None:
    for seq, chunk in events:
        seq.handle.put_nowait(chunk)
