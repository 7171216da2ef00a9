"""Run one model on every backend of its chain that can load here: same inputs, parity and latency.

This is the proof a migration needs: the new chip gives the same answers (max abs error and
cosine similarity per row against a reference entry) and how fast it is (p50 / p99 latency and
rows/s per batch size). `compare_report` is the full report (`hotswap compare`, rendered by
compare_render.py); `compare_chain` is the one-batch-size summary.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import select_backend
from hotswap.config import ModelConfig
from hotswap.errors import BackendUnavailable
from hotswap.models.pipeline import Pipeline
from hotswap.models.signature import Signature, Tensors
from hotswap.models.sources import ModelSource, resolve_source
from hotswap.serve.shadow import parity

SAMPLE_TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell sharply today.",
                "Größe, café, 日本語 — non-ASCII text.", "hotswap serves one model on any accelerator."]


@dataclass
class EntryResult:
    """One chain entry: what ran it, or why it could not; parity and latency when it ran."""

    position: int
    label: str
    device: str = ""
    skipped: str = ""
    max_abs_error: dict[str, float] = field(default_factory=dict)
    p50_ms: float = 0.0


def sample_inputs(signature: Signature, batch: int, seed: int = 0) -> Tensors:
    """Inputs for `signature`: sample sentences for BYTES, random normals / small ints otherwise."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in signature.inputs:
        if spec.datatype == "BYTES":
            texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)].encode() for i in range(batch)]
            inputs[spec.name] = np.array(texts, dtype=object).reshape(spec.example(batch, 1).shape)
        elif spec.dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(spec.example(batch).shape).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.integers(0, 2, spec.example(batch).shape).astype(spec.dtype)
    return inputs


def _timed_runs(pipeline: Pipeline, inputs: Tensors, runs: int) -> tuple[Tensors, list[float]]:
    """The outputs and the seconds of each of `runs` calls, after one warm-up call."""
    timings: list[float] = []
    outputs: Tensors = {}
    for _ in range(runs + 1):
        started = time.perf_counter()
        outputs, _ = pipeline.run(pipeline.check(inputs))
        timings.append(time.perf_counter() - started)
    return outputs, timings[1:]


def _time_entry(pipeline: Pipeline, inputs: Tensors, runs: int) -> tuple[Tensors, float]:
    """The outputs and the median seconds of `runs` calls, after one warm-up call."""
    outputs, timings = _timed_runs(pipeline, inputs, runs)
    return outputs, statistics.median(timings)


def max_abs_errors(outputs: Tensors, reference: Tensors) -> dict[str, float]:
    """Largest absolute difference per numeric output."""
    return {name: float(np.abs(np.asarray(out, np.float64) - np.asarray(reference[name], np.float64)).max())
            for name, out in outputs.items() if out.dtype.kind in "fiub"}


def compare_chain(model: ModelConfig, registry: BackendRegistry, config_dir: Path | None = None,
                  batch: int = 4, runs: int = 10) -> list[EntryResult]:
    """Load each chain entry alone, feed all the same inputs, compare with the first that loaded."""
    source = resolve_source(model.source, config_dir)
    results: list[EntryResult] = []
    reference: Tensors | None = None
    inputs: Tensors | None = None
    for position, entry in enumerate(model.backends):
        result = EntryResult(position, entry.label())
        results.append(result)
        single = model.model_copy(update={"backends": [entry]})
        try:
            _, backend = select_backend(single, source, registry)
        except BackendUnavailable as exc:
            result.skipped = exc.skipped[0].reason if exc.skipped else str(exc)
            continue
        pipeline = Pipeline(backend, model.processor or source.processor, source.base_dir)
        try:
            inputs = inputs if inputs is not None else sample_inputs(pipeline.signature, batch)
            result.device = backend.describe().get("device", "")
            outputs, seconds = _time_entry(pipeline, inputs, runs)
            result.p50_ms = seconds * 1000
        finally:
            pipeline.close()
        reference = reference if reference is not None else outputs
        result.max_abs_error = max_abs_errors(outputs, reference)
    return results


def jsonable(value):
    """`value` with every float that JSON cannot hold (inf, NaN) written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


@dataclass
class BatchResult:
    """One entry at one batch size."""

    batch: int
    p50_ms: float
    p99_ms: float
    rows_per_s: float
    max_abs_error: float  # over every numeric output, against the reference entry
    min_cosine: float  # lowest cosine similarity of a row (numeric outputs flattened) to the reference's
    errors: dict[str, float] = field(default_factory=dict)  # max abs error per output


@dataclass
class EntryReport:
    """One chain entry in the report: what ran it, or why it could not, and its results per batch size."""

    position: int
    label: str
    device: str = ""
    skipped: str = ""
    results: list[BatchResult] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        return max((r.max_abs_error for r in self.results), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((r.min_cosine for r in self.results), default=1.0)


@dataclass
class CompareReport:
    """Every chain entry × every batch size, against the reference entry; and the verdict."""

    model: str
    batches: list[int]
    runs: int
    reference: int | None  # chain position of the reference entry; None if nothing loaded
    entries: list[EntryReport]
    max_abs_error: float | None = None  # thresholds; None = not checked
    min_cosine: float | None = None

    def failures(self) -> list[str]:
        """Why each entry that ran is off the thresholds (empty: the move may go ahead)."""
        out = []
        for e in self.entries:
            if e.skipped or not e.results:
                continue
            if self.max_abs_error is not None and not e.max_abs_error <= self.max_abs_error:
                out.append(f"#{e.position} {e.label}: max abs error {e.max_abs_error:.3g} > {self.max_abs_error:g}")
            if self.min_cosine is not None and not e.min_cosine >= self.min_cosine:
                out.append(f"#{e.position} {e.label}: min cosine {e.min_cosine:.6f} < {self.min_cosine:g}")
        return out

    def as_dict(self) -> dict:
        entries = [asdict(e) | {"max_abs_error": e.max_abs_error, "min_cosine": e.min_cosine} for e in self.entries]
        return jsonable({"model": self.model, "batches": self.batches, "runs": self.runs, "reference": self.reference,
                "entries": entries, "thresholds": {"max_abs_error": self.max_abs_error,
                                                   "min_cosine": self.min_cosine},
                "failures": self.failures(), "passed": not self.failures()})


def _load_entry(model: ModelConfig, position: int, source: ModelSource,
                registry: BackendRegistry) -> Pipeline | str:
    """The entry's pipeline, or why it cannot load here."""
    single = model.model_copy(update={"backends": [model.backends[position]]})
    try:
        _, backend = select_backend(single, source, registry)
    except BackendUnavailable as exc:
        return exc.skipped[0].reason if exc.skipped else str(exc)
    return Pipeline(backend, model.processor or source.processor, source.base_dir)


def _measure(pipeline: Pipeline, batches: Sequence[int], runs: int, reference: dict[int, Tensors],
             step: Callable[[str], None]) -> list[BatchResult]:
    """Run every batch size; the first entry measured fills `reference`."""
    results = []
    for batch in batches:
        outputs, timings = _timed_runs(pipeline, sample_inputs(pipeline.signature, batch, seed=batch), runs)
        reference.setdefault(batch, outputs)
        max_abs, cosine = parity(reference[batch], outputs)
        ordered = sorted(timings)
        results.append(BatchResult(batch, 1000 * statistics.median(ordered),
                                   1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                                   batch * len(timings) / sum(timings), max_abs,
                                   float(cosine.min()) if cosine.size else 1.0,
                                   max_abs_errors(outputs, reference[batch])))
        step(f"batch {batch}")
    return results


def compare_report(model: ModelConfig, registry: BackendRegistry, config_dir: Path | None = None,
                   batches: Sequence[int] = (1, 8, 32), runs: int = 20, reference: int | None = None,
                   step: Callable[[str], None] = lambda _: None) -> CompareReport:
    """Load each chain entry alone (the reference first: by default the first that loads) and run
    every batch size on it, with the same inputs for all; `step` is called after each measurement."""
    source = resolve_source(model.source, config_dir)
    entries = [EntryReport(position, entry.label()) for position, entry in enumerate(model.backends)]
    order = list(range(len(entries)))
    if reference is not None:
        order.remove(reference)
        order.insert(0, reference)
    outputs: dict[int, Tensors] = {}
    chosen: int | None = None
    for position in order:
        entry = entries[position]
        loaded = _load_entry(model, position, source, registry)
        if isinstance(loaded, str):
            entry.skipped = loaded
            step(f"{entry.label} skipped")
            continue
        try:
            entry.device = loaded.backend.describe().get("device", "")
            chosen = position if chosen is None else chosen
            entry.results = _measure(loaded, batches, runs, outputs, step)
        finally:
            loaded.close()
    if reference is not None and chosen != reference:
        raise BackendUnavailable(f"the reference entry #{reference} {entries[reference].label} does not load here: "
                                 f"{entries[reference].skipped}")
    return CompareReport(model.name, list(batches), runs, chosen, entries)
