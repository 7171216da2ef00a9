"""Run one model on every backend of its chain that can load here: same inputs, parity and latency.

This is the proof a migration needs: the new chip gives the same answers (max abs error against
the chain's first loadable entry) and how fast it is (median latency of one batch).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import select_backend
from hotswap.config import ModelConfig
from hotswap.errors import BackendUnavailable
from hotswap.models.pipeline import Pipeline
from hotswap.models.signature import Signature, Tensors
from hotswap.models.sources import resolve_source

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


def _time_entry(pipeline: Pipeline, inputs: Tensors, runs: int) -> tuple[Tensors, float]:
    """The outputs and the median seconds of `runs` calls, after one warm-up call."""
    timings: list[float] = []
    outputs: Tensors = {}
    for _ in range(runs + 1):
        started = time.perf_counter()
        outputs, _ = pipeline.run(pipeline.check(inputs))
        timings.append(time.perf_counter() - started)
    return outputs, statistics.median(timings[1:])


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
