"""ModelRunner: one model's chain selection, backend instances, processors and batcher.

Each backend instance has its own single-thread executor: device and runtime state is
per thread, and every call of that instance (load, warm-up, infer, close) happens on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import Selection, load_instance, select_backend
from hotswap.config import ModelConfig
from hotswap.errors import ModelNotReady
from hotswap.models.pipeline import Pipeline, PipelineResult
from hotswap.models.signature import Signature, Tensors
from hotswap.models.sources import ModelSource, resolve_source
from hotswap.serve.batch import Batch, BatchHung, BatchOutcome, check_rows
from hotswap.serve.batcher import DynamicBatcher, PendingRequest, Release
from hotswap.serve.inline import InlinePolicy
from hotswap.serve.metrics import Metrics, ModelSeries
from hotswap.serve.placement import place_instances
from hotswap.serve.request_checks import check_limits, count_rows
from hotswap.server_config import LimitsConfig

log = logging.getLogger("hotswap.runner")

BatchHook = Callable[["ModelRunner", BatchOutcome], None]
Computing = PipelineResult | asyncio.Future[PipelineResult]
"""A batch handed to its instance: its result when it ran inline, else its thread's future."""


class ModelRunner:
    """Serves one configured model: start() loads it, infer() queues a request."""

    def __init__(self, config: ModelConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False, first_position: int = 0,
                 stop_position: int | None = None, on_batch: BatchHook | None = None) -> None:
        self.config = config
        # Failover loads a runner from a later chain entry on (or probes exactly one entry):
        # only backends[first_position:stop_position] are walked.
        self.first_position, self.stop_position = first_position, stop_position
        self.on_batch = on_batch
        self._batch_timeout_ms = config.failover.batch_timeout_ms if config.failover else None
        self._stuck: set[int] = set()  # instances whose thread is still inside a hung batch
        self._registry, self._metrics, self._config_dir, self._progress = registry, metrics, config_dir, progress
        self._executors: list[ThreadPoolExecutor] = []
        self._pipelines: list[Pipeline] = []
        self.source: ModelSource | None = None
        self.selection: Selection | None = None
        self.info: dict[str, str] = {}
        self.pinned_cores: list[int] = []  # instance i's thread runs on pinned_cores[i] (serve/placement.py)
        self.load_seconds = 0.0
        self._series: ModelSeries | None = None
        self._batcher: DynamicBatcher | None = None
        self._inline = InlinePolicy(0, 0, False)
        self._waiting: set[PendingRequest] = set()  # submitted, not answered: what a drain deadline answers

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, publish: bool = True) -> None:
        """Resolve the source, walk the chain, load every instance, start batching.

        `publish=False` (a standby) leaves the selected/info gauges alone until `publish()`.
        """
        started = time.perf_counter()
        cfg = self.config
        self.source = await asyncio.to_thread(resolve_source, cfg.source, self._config_dir, self._progress)
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"hotswap-{cfg.name}-{i}")
                           for i in range(cfg.instances)]
        try:
            await self._load_instances(self.source)
            self.pinned_cores = await place_instances(cfg.name, cfg.cpu_placement, self._pipelines, self._executors)
        except BaseException:
            await self.close()
            raise
        self.info = self._pipelines[0].backend.describe()
        self.load_seconds = time.perf_counter() - started
        self._make_series()
        if publish:
            self.publish()
        self._inline = InlinePolicy(cfg.batching.inline_max_us, len(self._pipelines),
                                    self.selected.backend_cls.inline_safe and self._batch_timeout_ms is None)
        self._batcher = DynamicBatcher(cfg.batching, self._run_batch, len(self._pipelines))
        self._batcher.start()
        log.info("model %s ready on %s #%d (%s) in %.2fs", cfg.name, self.selected.label, self.selected.position,
                 ", ".join(f"{k}={v}" for k, v in self.info.items()), self.load_seconds)

    async def _load_instances(self, source: ModelSource) -> None:
        """Instance 0 walks the chain; the others load the winner, each on its own thread."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        where = f"models.{cfg.name}.processor"
        processor_config = cfg.processor or source.processor

        def first() -> tuple[Selection, Pipeline]:
            tail = cfg.model_copy(update={"backends": cfg.backends[self.first_position:self.stop_position]})
            selection, backend = select_backend(tail, source, self._registry, cfg.instances)
            return selection.shifted(self.first_position), Pipeline(backend, processor_config, source.base_dir, where)

        def another(selection: Selection) -> Pipeline:
            return Pipeline(load_instance(selection, source, cfg), processor_config, source.base_dir, where)

        selection, pipeline = await loop.run_in_executor(self._executors[0], first)
        self.selection = selection
        self._pipelines.append(pipeline)
        results = await asyncio.gather(*(loop.run_in_executor(ex, another, selection) for ex in self._executors[1:]),
                                       return_exceptions=True)
        self._pipelines.extend(r for r in results if isinstance(r, Pipeline))
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    def _make_series(self) -> None:
        cfg, selection = self.config, self.selected
        labels = {"model": cfg.name, "version": cfg.version, "backend": selection.backend_cls.name,
                  "device": self.info.get("device", "unknown")}
        self._series = self._metrics.model_series(labels)
        self._series.load_seconds.set(self.load_seconds)
        self._series.count_pending(self._waiting)

    def publish(self) -> None:
        """Show this runner as the one serving: hotswap_backend_info, _selected, _skipped."""
        cfg, selection = self.config, self.selected
        self.series.publish_backend(self.info, selection.position, selection.skipped,
                                     self._pipelines[0].backend.memory_bytes)
        for skip in selection.skipped:
            log.warning("model %s: chain entry #%d %s skipped: %s", cfg.name, skip.position, skip.label, skip.reason)

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Finish queued and running requests (until the deadline), then free every instance."""
        if self._batcher is not None:
            await self._batcher.drain_and_stop(drain_timeout_s)
        if self._series is not None:
            self._series.retire()
        loop = asyncio.get_running_loop()
        closing = [loop.run_in_executor(ex, p.close) for ex, p in zip(self._executors, self._pipelines)]
        # A hung instance closes whenever its thread comes back; nobody waits for it.
        await asyncio.gather(*(c for i, c in enumerate(closing) if i not in self._stuck), return_exceptions=True)
        for ex in self._executors:
            ex.shutdown(wait=False)
        self._pipelines, self._executors = [], []

    # -- requests --------------------------------------------------------------------
    @property
    def series(self) -> ModelSeries:
        """This runner's metric children (labels: model, version, backend, device)."""
        if self._series is None:
            raise RuntimeError("runner not started")
        return self._series

    @property
    def selected(self) -> Selection:
        if self.selection is None:
            raise RuntimeError("runner not started")
        return self.selection

    @property
    def signature(self) -> Signature:
        """The public signature clients see."""
        return self._pipelines[0].signature

    async def infer(self, inputs: Tensors, timeout_s: float | None, limits: LimitsConfig | None = None) -> Tensors:
        """Validate, queue and await one request's outputs (its own rows only)."""
        if self._batcher is None:
            raise RuntimeError("runner not started")
        if not self._pipelines:  # closed: a swap or unload retired it
            raise ModelNotReady(f"model '{self.config.name}' on {self.selected.label} was unloaded; retry")
        pipeline = self._pipelines[0]
        pipeline.signature.check_inputs(inputs)
        rows = count_rows(inputs)
        if limits is not None:
            check_limits(inputs, rows, limits)
        inputs = pipeline.processor.check(inputs)  # a bad request fails here, alone, not its whole batch
        series = self.series
        index = self._batcher.lone_slot(self._inline.inline)
        if index is not None:
            series.queue_duration.observe(0.0)
            return self._run_alone(index, inputs, rows)
        request = self._batcher.submit(inputs, rows, timeout_s)
        series.queued()
        self._waiting.add(request)
        try:
            return await request.future
        finally:
            self._waiting.discard(request)
            series.answered()
            if request.started is not None:
                series.queue_duration.observe(request.started - request.enqueued)

    def abandon_waiting(self, error: Exception) -> None:
        """Answer every request still queued or running with `error` (a drain deadline passed)."""
        for request in list(self._waiting):
            if not request.future.done():
                request.future.set_exception(error)

    def _run_batch(self, index: int, batch: Batch, release: Release) -> Awaitable[None]:
        """Hand `batch` to instance `index` now, in the batcher worker's turn (onto the instance's
        thread, or inline if that is cheaper: serve/inline.py), and return what answers it."""
        t0 = time.perf_counter()
        inputs = batch.inputs()
        concat_s = time.perf_counter() - t0
        try:
            started: Computing | Exception = self._start_compute(index, inputs)
        except Exception as exc:
            started = exc
        return self._finish_batch(index, batch, inputs, started, release, (t0, concat_s))

    def _start_compute(self, index: int, inputs: Tensors) -> Computing:
        """Instance `index`'s result (run inline) or its future (handed to its thread)."""
        if index in self._stuck:
            raise BatchHung(f"instance {index} of '{self.selected.label}' is abandoned: an earlier batch hung")
        pipeline = self._pipelines[index]
        if self._inline.decide(index):
            done = pipeline.run(inputs)
            self._inline.observe(index, done[1], True)
            return done
        return asyncio.get_running_loop().run_in_executor(self._executors[index], pipeline.run, inputs)

    async def _finish_batch(self, index: int, batch: Batch, inputs: Tensors, started: Computing | Exception,
                            release: Release, timing: tuple[float, float]) -> None:
        """Await the compute (within any batch timeout), check its rows, free the instance, then answer."""
        t0, concat_s = timing
        try:
            if isinstance(started, Exception):
                raise started
            done = started if isinstance(started, tuple) else await self._on_thread(index, started)
            check_rows(done[0], batch.rows)
        except Exception as exc:
            self._fail(batch, inputs, exc, t0)
            return
        release()
        t1 = time.perf_counter()
        batch.scatter(done[0])
        self._record(inputs, batch.rows, done, t0, t1, concat_s)

    async def _on_thread(self, index: int, future: asyncio.Future[PipelineResult]) -> PipelineResult:
        timeout_ms = self._batch_timeout_ms
        try:
            async with asyncio.timeout(None if timeout_ms is None else timeout_ms / 1000):
                done = await future
        except TimeoutError:
            self._stuck.add(index)
            raise BatchHung(f"backend '{self.selected.label}' did not finish a batch within "
                            f"failover.batch_timeout_ms={timeout_ms:.0f}") from None
        self._inline.observe(index, done[1], False)
        return done

    def _run_alone(self, index: int, inputs: Tensors, rows: int) -> Tensors:
        """A batch of one chosen by `DynamicBatcher.lone_slot`, run inline now: its outputs are its own."""
        t0 = time.perf_counter()
        try:
            done = self._pipelines[index].run(inputs)
            self._inline.observe(index, done[1], True)
            t1 = time.perf_counter()
            check_rows(done[0], rows)
        except Exception as exc:
            self._fail(None, inputs, exc, t0)
            raise
        self._record(inputs, rows, done, t0, t1, 0.0)
        return done[0]

    def _fail(self, batch: Batch | None, inputs: Tensors, exc: Exception, t0: float) -> None:
        """Answer the batch's requests (none for a lone request, which raises) with `exc`, and report it."""
        if batch is not None:
            batch.fail(exc)
        if self.on_batch is not None:
            self.on_batch(self, BatchOutcome(inputs, None, exc, time.perf_counter() - t0))

    def _record(self, inputs: Tensors, rows: int, done: PipelineResult, t0: float, t1: float, concat_s: float) -> None:
        """Report an answered batch (computed from `t0` to `t1`) and record its execution metrics."""
        times = done[1]
        if self.on_batch is not None:
            self.on_batch(self, BatchOutcome(inputs, done[0], None, t1 - t0))
        self.series.executed(rows, concat_s + times.preprocess_s, times.infer_s,
                             times.postprocess_s + time.perf_counter() - t1)

    # -- description -----------------------------------------------------------------
    def platform(self) -> str:
        return self.selected.platform

    def metadata(self) -> dict:
        """v2 model metadata plus what really serves the model and why earlier entries were skipped."""
        sel = self.selected

        def specs(items):
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

        return {
            "name": self.config.name, "versions": [self.config.version], "platform": self.platform(),
            "inputs": specs(self.signature.inputs), "outputs": specs(self.signature.outputs),
            "backend": {"name": sel.backend_cls.name, "entry": sel.label, "chain_position": sel.position,
                        "instances": len(self._pipelines), "pinned_cores": self.pinned_cores, **self.info},
            "skipped": [s.as_dict() for s in sel.skipped], "batching": self.config.batching.model_dump(),
        }
