"""Prometheus metrics, one CollectorRegistry per app, mirroring Triton's set.

Every model series carries `model`, `version`, `backend` and `device`, where backend and
device come from the backend's own `describe()`: a model that swaps backend keeps its
old series and starts new ones under the new labels.

With `hotswap serve --workers N` (serve/workers.py) every worker runs with
PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported: values live in that
directory's files, and a scrape of any worker reads all of them (`WorkersRegistry`). Each
gauge names how its per-worker values combine; none uses `set_function`, which that mode
cannot export.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sized

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from hotswap.errors import HotswapError
from hotswap.serve.tally import LocalCounter, LocalHistogram, TallyFlusher
from hotswap.serve.workers import MULTIPROC_ENV

LABELS = ("model", "version", "backend", "device")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ERROR_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
COSINE_BUCKETS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 1.0)
SHADOW_LABELS = ("model", "version", "shadow")


class WorkersRegistry(CollectorRegistry):
    """A worker's registry under `--workers N`: families register here as usual, but a scrape
    exposes every worker's values, read from the multiprocess directory by a fresh registry and
    `MultiProcessCollector` each time (values of workers that exited stay in counters and
    histograms; live-only gauges drop them)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        #: Called before each scrape: values this worker can only sample (device memory).
        self.refreshers: list[Callable[[], None]] = []

    def collect(self) -> Iterator[Metric]:
        for refresh in list(self.refreshers):
            refresh()
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape, path=self.path)
        yield from scrape.collect()


class Metrics:
    """All of hotswap's metric families, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        path = os.environ.get(MULTIPROC_ENV)
        #: The multiprocess registry when workers share the port; None: plain in-process values.
        self.workers: WorkersRegistry | None = WorkersRegistry(path) if path and registry is None else None
        self.registry = registry or self.workers or CollectorRegistry()
        r = self.registry
        #: Folds the per-request tallies into their children at each scrape (serve/tally.py); in-process only.
        self.flusher = self._tally_flusher(r)
        self.request_success = Counter("hotswap_request_success", "Inference requests answered successfully",
                                       LABELS, registry=r)
        self.request_failure = Counter("hotswap_request_failure", "Inference requests that failed, by reason",
                                       (*LABELS, "reason"), registry=r)
        self.inference_count = Counter("hotswap_inference_count", "Rows (batch items) inferred", LABELS, registry=r)
        self.execution_count = Counter("hotswap_execution_count", "Backend calls (batches) executed", LABELS,
                                       registry=r)
        self.pending_requests = Gauge("hotswap_pending_requests", "Requests queued or running", LABELS, registry=r,
                                      multiprocess_mode="livesum")
        self.request_duration = Histogram("hotswap_request_duration_seconds", "Request time inside the server",
                                          LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram("hotswap_queue_duration_seconds", "Time a request waited in the queue",
                                        LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.compute_input_duration = Histogram("hotswap_compute_input_duration_seconds",
                                                "Batch assembly and pre-processing time per batch", LABELS,
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.compute_infer_duration = Histogram("hotswap_compute_infer_duration_seconds",
                                                "Backend execution time per batch", LABELS,
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.compute_output_duration = Histogram("hotswap_compute_output_duration_seconds",
                                                 "Post-processing and output split time per batch", LABELS,
                                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("hotswap_batch_size", "Rows per backend call", LABELS, buckets=BATCH_BUCKETS,
                                    registry=r)
        # Gauges below, under --workers N: the slowest live worker's load; 1 if any live worker
        # serves or skipped that entry; the device memory of all live workers together.
        self.model_load_seconds = Gauge("hotswap_model_load_seconds", "Seconds the last load took", LABELS,
                                        registry=r, multiprocess_mode="livemax")
        self.backend_info = Gauge("hotswap_backend_info", "What really runs the model (from describe())",
                                  (*LABELS, "providers", "precision", "runtime"), registry=r,
                                  multiprocess_mode="livemax")
        self.backend_selected = Gauge("hotswap_backend_selected", "1 for the chain entry serving the model",
                                      (*LABELS, "position"), registry=r, multiprocess_mode="livemax")
        self.backend_skipped = Gauge("hotswap_backend_skipped", "1 for each chain entry skipped at the last load",
                                     ("model", "version", "position", "backend", "reason"), registry=r,
                                     multiprocess_mode="livemax")
        self.device_memory = Gauge("hotswap_device_memory_bytes", "Accelerator memory allocated by the backend",
                                   LABELS, registry=r, multiprocess_mode="livesum")
        self._resilience_families(r)
        self.memory_trims = Counter("hotswap_memory_trims", "Idle heap trims (server.memory_trim)", registry=r)
        self.memory_trimmed = Counter("hotswap_memory_trimmed_bytes", "Resident memory idle heap trims gave back "
                                      "to the OS", registry=r)
        #: 1 once this worker listens (set by serve/workers.py); summed over live workers.
        self.serving_workers = None if self.workers is None else Gauge(
            "hotswap_workers", "Server processes listening on this port (--workers)", registry=r,
            multiprocess_mode="livesum")
        # Live runners per backend_selected / backend_skipped child: a reload onto the same labels
        # must not be zeroed when the runner it replaces retires.
        self._held: Tally[tuple[Gauge, tuple[str, ...]]] = Tally()
        # In-process pending gauges read their runners' waiting sets at scrape time (ModelSeries.count_pending).
        self._pending: dict[tuple[str, ...], list[Sized]] = {}

    def _tally_flusher(self, r: CollectorRegistry) -> TallyFlusher | None:
        if self.workers is not None:
            return None
        flusher = TallyFlusher()
        r.register(flusher)  # before every family: a collect runs it first
        return flusher

    def _resilience_families(self, r: CollectorRegistry) -> None:
        """Failover and shadow parity (serve/supervisor.py, serve/shadow.py)."""
        self.failover = Counter("hotswap_failover", "Switches of the serving backend, by cause",
                                ("model", "from", "to", "reason"), registry=r)
        self.failover_retries = Counter("hotswap_failover_retries", "Requests of a failed batch retried on "
                                        "another attempt", ("model",), registry=r)
        self.failover_switch_seconds = Histogram("hotswap_failover_switch_seconds", "From the batch that made "
                                                 "a backend faulty to traffic on the next one", ("model",),
                                                 buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_batches = Counter("hotswap_shadow_batches", "Sampled batches re-run on the shadow backend, "
                                      "by result (match, mismatch, error, dropped)", (*SHADOW_LABELS, "result"),
                                      registry=r)
        self.shadow_max_abs_error = Histogram("hotswap_shadow_max_abs_error", "Largest absolute difference per "
                                              "shadowed batch", SHADOW_LABELS, buckets=ERROR_BUCKETS, registry=r)
        self.shadow_cosine = Histogram("hotswap_shadow_cosine", "Cosine similarity per shadowed row",
                                       SHADOW_LABELS, buckets=COSINE_BUCKETS, registry=r)
        self.shadow_duration = Histogram("hotswap_shadow_duration_seconds", "Shadow backend time per batch",
                                         SHADOW_LABELS, buckets=LATENCY_BUCKETS, registry=r)

    def trimmed(self, released: int) -> None:
        """One idle heap trim gave back `released` resident bytes (negative: none)."""
        self.memory_trims.inc()
        self.memory_trimmed.inc(max(released, 0))

    def hold(self, gauge: Gauge, labels: tuple[str, ...], change: int) -> int:
        """Count live runners holding one gauge child; returns how many hold it now."""
        self._held[(gauge, labels)] += change
        return self._held[(gauge, labels)]

    def pending_sources(self, labels: tuple[str, ...]) -> list[Sized]:
        """The waiting sets whose sizes make up one pending gauge child (created, and bound, on first use)."""
        sources = self._pending.get(labels)
        if sources is None:
            sources = self._pending[labels] = []
            self.pending_requests.labels(*labels).set_function(lambda: sum(len(s) for s in sources))
        return sources

    def model_series(self, labels: dict[str, str]) -> ModelSeries:
        return ModelSeries(self, labels)


class ModelSeries:
    """The children of every family for one (model, version, backend, device)."""

    def __init__(self, metrics: Metrics, labels: dict[str, str]) -> None:
        values = tuple(labels[k] for k in LABELS)
        self._metrics = metrics
        self._values = values
        self._held: list[tuple[Gauge, tuple[str, ...]]] = []
        self._refresh: Callable[[], None] | None = None
        self._pending: tuple[list[Sized], Sized] | None = None
        self._counted = True  # pending counted per request; False once it reads a waiting set (kept past retire)
        self.inference_count = metrics.inference_count.labels(*values)
        self.execution_count = metrics.execution_count.labels(*values)
        self.pending = metrics.pending_requests.labels(*values)
        # Updated on every request: tallied in-process (serve/tally.py), the children themselves under workers.
        self._children = (metrics.request_success.labels(*values), metrics.request_duration.labels(*values),
                          metrics.queue_duration.labels(*values))
        self.success: Counter | LocalCounter = self._children[0]
        self.request_duration: Histogram | LocalHistogram = self._children[1]
        self.queue_duration: Histogram | LocalHistogram = self._children[2]
        self._tallies: tuple[LocalCounter, LocalHistogram, LocalHistogram] | None = None
        if metrics.flusher is not None:
            self._tallies = (LocalCounter(self._children[0]), LocalHistogram(self._children[1]),
                             LocalHistogram(self._children[2]))
            self.success, self.request_duration, self.queue_duration = self._tallies
            metrics.flusher.tallies.extend(self._tallies)
        self.compute_input = metrics.compute_input_duration.labels(*values)
        self.compute_infer = metrics.compute_infer_duration.labels(*values)
        self.compute_output = metrics.compute_output_duration.labels(*values)
        self.batch_size = metrics.batch_size.labels(*values)
        self.load_seconds = metrics.model_load_seconds.labels(*values)

    def count_pending(self, waiting: Sized) -> None:
        """Show `len(waiting)` in this series' pending gauge, read at each scrape, until `retire()`, so
        `queued()` / `answered()` update nothing. Not under --workers: a scrape there reads other
        processes' files, not this set, and those two count the gauge up and down."""
        if self._metrics.workers is not None:
            return
        sources = self._metrics.pending_sources(self._values)
        sources.append(waiting)
        self._pending = (sources, waiting)
        self._counted = False

    def queued(self) -> None:
        """A request was queued (the pending gauge counts it unless it reads the waiting set)."""
        if self._counted:
            self.pending.inc()

    def answered(self) -> None:
        """A queued request left: answered, failed or cancelled."""
        if self._counted:
            self.pending.dec()

    def executed(self, rows: int, input_s: float, infer_s: float, output_s: float) -> None:
        """One backend call answered its batch of `rows`: Triton's execution, inference and compute metrics."""
        self.execution_count.inc()
        self.inference_count.inc(rows)
        self.batch_size.observe(rows)
        self.compute_input.observe(input_s)
        self.compute_infer.observe(infer_s)
        self.compute_output.observe(output_s)

    def failure(self, reason: str) -> None:
        self._metrics.request_failure.labels(*self._values, reason).inc()

    def outcome(self, exc: BaseException | None, started: float) -> None:
        """Count one request: success and its time since `started` (perf_counter), or the failure
        under the error's own reason (a client gone is `cancelled`, anything unforeseen `internal_error`)."""
        if exc is None:
            self.success.inc()
            self.request_duration.observe(time.perf_counter() - started)
        elif isinstance(exc, HotswapError):
            self.failure(exc.reason)
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.failure("cancelled")
        else:
            self.failure("internal_error")

    def publish_backend(self, info: dict[str, str], position: int, skipped: list,
                        memory: Callable[[], int | None]) -> None:
        """Record what runs the model and which chain entries were passed over."""
        m = self._metrics
        self._hold(m.backend_info, (*self._values, info.get("providers", ""), info.get("precision", ""),
                                    info.get("runtime", "")))
        self._hold(m.backend_selected, (*self._values, str(position)))
        model, version = self._values[0], self._values[1]
        for skip in skipped:
            self._hold(m.backend_skipped, (model, version, str(skip.position), skip.label, skip.reason[:200]))
        child = m.device_memory.labels(*self._values)
        if m.workers is None:
            child.set_function(lambda: memory() or 0)
        else:  # set_function exports nothing across workers: sample now and at each scrape of this worker
            def refresh() -> None:
                try:
                    child.set(memory() or 0)
                except Exception:  # a closed backend: it holds nothing any more
                    child.set(0)
            refresh()
            m.workers.refreshers.append(refresh)
            self._refresh = refresh

    def _hold(self, gauge: Gauge, labels: tuple[str, ...]) -> None:
        self._held.append((gauge, labels))
        self._metrics.hold(gauge, labels, +1)
        gauge.labels(*labels).set(1)

    def retire(self) -> None:
        """The backend no longer serves: it is not selected, and its skipped entries are not
        the last load's, any more (history stays)."""
        for gauge, labels in self._held:
            if self._metrics.hold(gauge, labels, -1) <= 0:  # no newer runner holds the same labels
                gauge.labels(*labels).set(0)
        self._held = []
        flusher = self._metrics.flusher
        if self._tallies is not None and flusher is not None:
            # Requests still in flight may finish on this series: from now on they update the children.
            flusher.forget(*self._tallies)
            self.success, self.request_duration, self.queue_duration = self._children
            self._tallies = None
        if self._pending is not None:
            sources, waiting = self._pending
            sources[:] = [s for s in sources if s is not waiting]
            self._pending = None
        workers = self._metrics.workers
        if workers is not None and self._refresh in workers.refreshers:
            workers.refreshers.remove(self._refresh)
