"""ModelRunner: one model's chain selection, backend instances, processor and batcher.

Each backend instance has its own single-thread executor: device and runtime state is
per thread, and every call of that instance (load, warm-up, infer, close) happens on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hotswap.backends.base import Backend
from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import Selection, load_instance, select_backend
from hotswap.errors import InvalidInput
from hotswap.models.config import ModelConfig
from hotswap.models.processing import Processor, make_processor
from hotswap.models.signature import Signature, Tensors
from hotswap.models.sources import ModelSource, resolve_source
from hotswap.serve.batcher import DynamicBatcher, PendingRequest
from hotswap.serve.metrics import Metrics, ModelSeries

log = logging.getLogger("hotswap.runner")


def _rows(inputs: Tensors) -> int:
    first = next(iter(inputs.values()), None)
    if first is None or first.ndim == 0:
        raise InvalidInput("inputs need a batch dimension (dim 0)")
    if first.shape[0] == 0:
        raise InvalidInput(f"input '{next(iter(inputs))}': shape {list(first.shape)} has 0 rows; expected at least 1")
    return first.shape[0]


def _concat(batch: list[PendingRequest]) -> Tensors:
    if len(batch) == 1:
        return batch[0].inputs
    names = batch[0].inputs.keys()
    return {name: np.concatenate([r.inputs[name] for r in batch]) for name in names}


class ModelRunner:
    """Serves one configured model: start() loads it, infer() queues a request."""

    def __init__(self, config: ModelConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False) -> None:
        self.config = config
        self._registry = registry
        self._metrics = metrics
        self._config_dir = config_dir
        self._progress = progress
        self._executors: list[ThreadPoolExecutor] = []
        self._backends: list[Backend] = []
        self._processors: list[Processor] = []
        self.source: ModelSource | None = None
        self.selection: Selection | None = None
        self.signature: Signature | None = None
        self.info: dict[str, str] = {}
        self.series: ModelSeries | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve the source, walk the chain, load every instance, start batching."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.source = await asyncio.to_thread(resolve_source, cfg.source, self._config_dir, self._progress)
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"hotswap-{cfg.name}-{i}")
                           for i in range(cfg.instances)]
        try:
            self.selection, first = await loop.run_in_executor(
                self._executors[0], select_backend, cfg, self.source, self._registry, cfg.instances)
            self._backends.append(first)
            more = await asyncio.gather(*(loop.run_in_executor(ex, load_instance, self.selection, self.source, cfg)
                                          for ex in self._executors[1:]))
            self._backends.extend(more)
            processor_config = cfg.processor or self.source.processor
            where = f"models.{cfg.name}.processor"
            self._processors = [make_processor(processor_config, self.source.base_dir, where)
                                for _ in self._backends]
        except BaseException:
            await self.close()
            raise
        self.signature = self._processors[0].signature(first.signature)
        self.info = first.describe()
        self.load_seconds = time.perf_counter() - started
        labels = {"model": cfg.name, "version": cfg.version, "backend": self.selection.backend_cls.name,
                  "device": self.info.get("device", "unknown")}
        self.series = self._metrics.model_series(labels)
        self.series.load_seconds.set(self.load_seconds)
        self.series.publish_backend(self.info, self.selection.position, self.selection.skipped,
                                    getattr(first, "memory_bytes", None))
        self.batcher = DynamicBatcher(cfg.batching, self._run_batch, len(self._backends))
        self.batcher.start()
        for skip in self.selection.skipped:
            log.warning("model %s: chain entry #%d %s skipped: %s", cfg.name, skip.position, skip.label, skip.reason)
        log.info("model %s ready on %s #%d (%s) in %.2fs", cfg.name, self.selection.label, self.selection.position,
                 ", ".join(f"{k}={v}" for k, v in self.info.items()), self.load_seconds)

    async def close(self) -> None:
        """Finish queued and running requests, then free every instance."""
        if self.batcher is not None:
            await self.batcher.drain_and_stop()
        if self.series is not None:
            self.series.retire()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(ex, b.close) for ex, b in zip(self._executors, self._backends)),
                             return_exceptions=True)
        for ex in self._executors:
            ex.shutdown(wait=False)
        self._backends, self._executors = [], []

    # -- requests --------------------------------------------------------------------
    async def infer(self, inputs: Tensors, timeout_s: float | None = None) -> Tensors:
        """Validate, queue and await one request's outputs (its own rows only)."""
        self.signature.check_inputs(inputs)
        rows = _rows(inputs)
        if timeout_s is None and self.config.batching.timeout_ms is not None:
            timeout_s = self.config.batching.timeout_ms / 1000
        request = self.batcher.submit(inputs, rows, timeout_s)
        self.series.pending.inc()
        try:
            return await request.future
        finally:
            self.series.pending.dec()
            if request.started is not None:
                self.series.queue_duration.observe(request.started - request.enqueued)

    def _compute(self, index: int, inputs: Tensors) -> tuple[Tensors, float, float, float]:
        """Runs on instance `index`'s thread: pre-process, infer, post-process."""
        processor, backend = self._processors[index], self._backends[index]
        t0 = time.perf_counter()
        prepared = processor.preprocess(inputs)
        t1 = time.perf_counter()
        outputs = backend.infer(prepared)
        t2 = time.perf_counter()
        results = processor.postprocess(prepared, outputs)
        return results, t1 - t0, t2 - t1, time.perf_counter() - t2

    async def _run_batch(self, index: int, batch: list[PendingRequest]) -> None:
        t0 = time.perf_counter()
        inputs = _concat(batch)
        concat_s = time.perf_counter() - t0
        total = sum(r.rows for r in batch)
        loop = asyncio.get_running_loop()
        try:
            results, pre_s, infer_s, post_s = await loop.run_in_executor(
                self._executors[index], self._compute, index, inputs)
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        t1 = time.perf_counter()
        offset = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result({name: out[offset:offset + request.rows] for name, out in results.items()})
            offset += request.rows
        series = self.series
        series.execution_count.inc()
        series.inference_count.inc(total)
        series.batch_size.observe(total)
        series.compute_input.observe(concat_s + pre_s)
        series.compute_infer.observe(infer_s)
        series.compute_output.observe(post_s + time.perf_counter() - t1)

    # -- description -----------------------------------------------------------------
    def platform(self) -> str:
        artifact = self.source.artifact_for(self.selection.backend_cls.formats) if self.source else None
        suffix = artifact.suffix.lstrip(".") if artifact else "unknown"
        return f"{self.selection.backend_cls.name}_{suffix}"

    def metadata(self) -> dict:
        """v2 model metadata plus what really serves the model and why earlier entries were skipped."""
        sel = self.selection

        def specs(items):
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

        return {
            "name": self.config.name, "versions": [self.config.version], "platform": self.platform(),
            "inputs": specs(self.signature.inputs), "outputs": specs(self.signature.outputs),
            "backend": {"name": sel.backend_cls.name, "entry": sel.label, "chain_position": sel.position,
                        "instances": len(self._backends), **self.info},
            "skipped": [s.as_dict() for s in sel.skipped],
            "batching": self.config.batching.model_dump(),
        }
