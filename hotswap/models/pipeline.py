"""One backend instance with its bound processor: public inputs in, public outputs out.

The server's runner and `hotswap compare` both run requests through this, so the two
cannot drift apart in how a model is fed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hotswap.backends.base import Backend
from hotswap.config import ProcessorConfig
from hotswap.models.processing import Processor, make_processor
from hotswap.models.signature import Signature, Tensors


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent in each stage of one pipeline call."""

    preprocess_s: float
    infer_s: float
    postprocess_s: float
    #: CPU seconds of the calling thread for the whole call (waits for the GIL or a device not counted).
    cpu_s: float | None = None


PipelineResult = tuple[Tensors, StageTimes]
"""One call's outputs and the time each stage took."""


class Pipeline:
    """A loaded backend and the processor bound to its signature."""

    def __init__(self, backend: Backend, processor_config: ProcessorConfig | None, base_dir: Path,
                 where: str = "processor") -> None:
        if backend.signature is None:
            raise ValueError("Pipeline needs a loaded backend")
        self.backend = backend
        try:
            self.processor: Processor = make_processor(processor_config, base_dir, backend.signature, where)
        except BaseException:
            backend.close()  # the caller never gets a pipeline to close
            raise

    @property
    def signature(self) -> Signature:
        """What clients send and receive."""
        return self.processor.signature

    def check(self, inputs: Tensors) -> Tensors:
        """Per-request validation (cheap, before queueing): a bad request fails alone."""
        self.signature.check_inputs(inputs)
        return self.processor.check(inputs)

    def run(self, inputs: Tensors) -> PipelineResult:
        """Pre-process, infer and post-process one batch of already-checked inputs."""
        c0, t0 = time.thread_time(), time.perf_counter()
        prepared = self.processor.preprocess(inputs)
        t1 = time.perf_counter()
        outputs = self.backend.infer(prepared)
        t2 = time.perf_counter()
        results = self.processor.postprocess(prepared, outputs)
        return results, StageTimes(t1 - t0, t2 - t1, time.perf_counter() - t2, time.thread_time() - c0)

    def close(self) -> None:
        self.backend.close()
