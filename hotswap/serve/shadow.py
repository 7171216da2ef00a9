"""Shadow parity: a sample of live batches re-run on a second backend after the primary answered.

The primary's requests are answered before a batch is offered here, and an offer only puts it
on a bounded queue (a full queue drops it and counts `dropped`), so the shadow can neither delay
nor fail a client. One worker thread runs the shadow pipeline and compares its outputs with the
primary's: largest absolute difference and cosine similarity per row, against `shadow.atol`
and `shadow.min_cosine`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import select_backend
from hotswap.config import ModelConfig, ShadowConfig
from hotswap.errors import ConfigError
from hotswap.models.pipeline import Pipeline
from hotswap.models.signature import Signature, Tensors
from hotswap.models.sources import resolve_source
from hotswap.serve.metrics import Metrics
from hotswap.serve.placement import lower_priority

log = logging.getLogger("hotswap.shadow")

RESULTS = ("match", "mismatch", "error", "dropped")


def parity(reference: Tensors, outputs: Tensors) -> tuple[float, np.ndarray]:
    """(largest absolute difference, cosine similarity per row) over every numeric output.

    A row is all of its numeric outputs flattened together. Anything not finite, or a shape
    that differs, is the worst result possible (inf, -1), never a silent pass.
    """
    left, right = [], []
    for name, ref in reference.items():
        ref = np.asarray(ref)
        if ref.dtype.kind not in "fiub":
            continue
        out = np.asarray(outputs.get(name))
        if out.shape != ref.shape:
            return float("inf"), -np.ones(max(len(ref), 1))
        row = int(np.prod(ref.shape[1:]))  # not -1: numpy cannot infer it for a batch of no rows
        left.append(ref.astype(np.float64).reshape(len(ref), row))
        right.append(out.astype(np.float64).reshape(len(ref), row))
    if not left:
        return 0.0, np.ones(0)
    a, b = np.concatenate(left, axis=1), np.concatenate(right, axis=1)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf"), -np.ones(len(a))
    max_abs = float(np.abs(a - b).max()) if a.size else 0.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    return max_abs, np.where(both_zero, 1.0, cosine)


def describe(signature: Signature) -> str:
    """'x FP32[-1,8] -> y FP32[-1,4], z FP32[-1,1]': what two backends must agree on to be compared."""
    def specs(items) -> str:
        return ", ".join(f"{s.name} {s.datatype}[{','.join(map(str, s.shape))}]" for s in items)
    return f"{specs(signature.inputs)} -> {specs(signature.outputs)}"


def comparable(signature: Signature) -> tuple:
    """Names, datatypes and ranks of inputs and outputs (dims may differ: one backend may know a size
    the other leaves -1)."""
    def specs(items) -> tuple:
        return tuple((spec.name, spec.datatype, len(spec.shape)) for spec in items)
    return specs(signature.inputs), specs(signature.outputs)


def finite_or_text(value: float) -> float | str:
    """JSON has no inf or NaN: those are reported as text."""
    return value if np.isfinite(value) else str(value)


def within(max_abs: float, cosine: np.ndarray, atol: float, min_cosine: float) -> bool:
    """Both tolerances hold (written so that NaN fails them)."""
    return max_abs <= atol and bool((cosine >= min_cosine).all())


class ShadowParity:
    """The shadow backend of one model, its bounded queue, and what it found so far."""

    def __init__(self, model: ModelConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False) -> None:
        if model.shadow is None:
            raise ValueError("ShadowParity needs a model with `shadow:`")
        self.config: ShadowConfig = model.shadow
        self._model, self._registry, self._config_dir, self._progress = model, registry, config_dir, progress
        self.label = self.config.backend.label()
        labels = (model.name, model.version, self.label)
        self._batches = {result: metrics.shadow_batches.labels(*labels, result) for result in RESULTS}
        self._max_abs = metrics.shadow_max_abs_error.labels(*labels)
        self._cosine = metrics.shadow_cosine.labels(*labels)
        self._duration = metrics.shadow_duration.labels(*labels)
        self._queue: asyncio.Queue[tuple[Tensors, Tensors]] = asyncio.Queue(self.config.max_queue)
        # The backend loads on this thread, so the threads its runtime starts (ORT's or torch's
        # pools) inherit the lowered priority too: the shadow yields the cores to the primary.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"hotswap-{model.name}-shadow",
                                            initializer=lower_priority, initargs=(self.config.nice,))
        self._pipeline: Pipeline | None = None
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()
        self.counts: Tally[str] = Tally()
        self.device = ""
        self.worst_max_abs = 0.0
        self.worst_cosine = 1.0
        self.last_mismatch: dict | None = None
        self.last_error = ""

    async def start(self, primary: Signature | None = None) -> None:
        """Load the shadow backend on its own thread (a one-entry chain: its failure is the error).

        With the `primary`'s signature, a shadow that answers by other names or types (a torch.export
        file names its outputs output_N) is refused here: it could only ever report mismatches."""
        model = self._model
        source = await asyncio.to_thread(resolve_source, model.source, self._config_dir, self._progress)
        single = model.model_copy(update={"backends": [self.config.backend]})

        def load() -> Pipeline:
            _, backend = select_backend(single, source, self._registry)
            return Pipeline(backend, model.processor or source.processor, source.base_dir,
                            f"models.{model.name}.processor")

        try:
            self._pipeline = await asyncio.get_running_loop().run_in_executor(self._executor, load)
            if primary is not None and comparable(self._pipeline.signature) != comparable(primary):
                raise ConfigError(f"models.{model.name}.shadow: the shadow backend {self.label} serves "
                                  f"{describe(self._pipeline.signature)} but the model serves {describe(primary)}; "
                                  "declare the model's `inputs` and `outputs` in its config so both backends "
                                  "answer by the same names")
        except BaseException:
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None
            self._executor.shutdown(wait=False)
            raise
        self.device = self._pipeline.backend.describe().get("device", "")
        self._task = asyncio.create_task(self._work(), name=f"hotswap-shadow-{model.name}")
        log.info("model %s: shadow parity on %s (%s), sampling %.1f%% of batches", model.name, self.label,
                 self.device, 100 * self.config.sample)

    def offer(self, inputs: Tensors, outputs: Tensors) -> None:
        """Called after the primary answered a batch: maybe queue it for the shadow, never wait."""
        if self._random.random() >= self.config.sample:
            return
        try:
            self._queue.put_nowait((inputs, outputs))
        except asyncio.QueueFull:
            self._record("dropped")

    def _record(self, result: str) -> None:
        self.counts[result] += 1
        self._batches[result].inc()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            inputs, expected = await self._queue.get()
            try:
                seconds, max_abs, cosine = await loop.run_in_executor(self._executor, self._compare, inputs, expected)
            except Exception as exc:  # the shadow's failure is a finding, never the client's problem
                self._record("error")
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            self._judge(seconds, max_abs, cosine)

    def _compare(self, inputs: Tensors, expected: Tensors) -> tuple[float, float, np.ndarray]:
        """(shadow seconds, max abs error, cosine per row); runs on the shadow's thread."""
        assert self._pipeline is not None
        started = time.perf_counter()
        outputs, _ = self._pipeline.run(inputs)
        seconds = time.perf_counter() - started
        return (seconds, *parity(expected, outputs))

    def _judge(self, seconds: float, max_abs: float, cosine: np.ndarray) -> None:
        self._duration.observe(seconds)
        self._max_abs.observe(max_abs)
        for value in cosine:
            self._cosine.observe(float(value))
        lowest = float(cosine.min()) if cosine.size else 1.0
        self.worst_max_abs = max(self.worst_max_abs, max_abs)
        self.worst_cosine = min(self.worst_cosine, lowest)
        if within(max_abs, cosine, self.config.atol, self.config.min_cosine):
            self._record("match")
            return
        self._record("mismatch")
        self.last_mismatch = {"at": time.time(), "max_abs_error": finite_or_text(max_abs), "min_cosine": lowest,
                              "rows": int(cosine.size)}
        log.warning("model %s: shadow %s disagrees: max abs error %.3g (atol %g), min cosine %.6f (min %g)",
                    self._model.name, self.label, max_abs, self.config.atol, lowest, self.config.min_cosine)

    def summary(self) -> dict:
        """For the model metadata."""
        return {"backend": self.label, "device": self.device, "sample": self.config.sample,
                "atol": self.config.atol, "min_cosine": self.config.min_cosine,
                "batches": {result: self.counts[result] for result in RESULTS}, "queued": self._queue.qsize(),
                "worst_max_abs_error": finite_or_text(self.worst_max_abs), "worst_cosine": self.worst_cosine,
                "last_mismatch": self.last_mismatch, "last_error": self.last_error}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pipeline is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._pipeline.close)
        self._executor.shutdown(wait=False)
