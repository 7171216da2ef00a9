"""The ceiling: MiniLM in-process, no server -- tokenizer + onnxruntime + pooling per batch.

The session uses hotswap's own default onnxruntime options (built by its backend), so the
only difference from the served numbers is the serving path itself.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from minilm_embed import MiniLM  # noqa: E402

#: Tokenises to exactly 32 tokens with [CLS] and [SEP] (checked by check_sentence).
SENTENCE = ("The quick brown fox jumps over the lazy dog while the server batches many small requests "
            "together to keep every core of the machine busy and very fast.")
SEQ_LEN = 32


def load(model_dir: Path, sharing: int = 1) -> MiniLM:
    """The server's default session, or with `sharing` > 1 one of that many sessions as hotswap
    sizes each of `instances: sharing` (CPU threads split between them)."""
    from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeOptions

    options = OnnxRuntimeBackend.tune_for_instances(OnnxRuntimeOptions(), sharing)
    return MiniLM(model_dir, session_options=OnnxRuntimeBackend()._session_options(options))


def check_sentence(model: MiniLM) -> int:
    n = len(model.tokenizer.encode(SENTENCE).ids)
    if n != SEQ_LEN:
        raise SystemExit(f"benchmark sentence tokenises to {n} tokens, expected {SEQ_LEN}")
    return n


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _loop(model: MiniLM, texts: list[str], start: float, seconds: float, lat: list[float]) -> None:
    end = start + seconds
    while (now := time.perf_counter()) < end or len(lat) < 5:
        model.embed(texts)
        lat.append(time.perf_counter() - now)


def measure(model: MiniLM | list[MiniLM], batch: int, seconds: float, warmup_s: float,
            text: str = SENTENCE) -> dict:
    """Back-to-back batches of `batch` copies of `text` (default SENTENCE) for `seconds`; with a
    list of models, one loop per model, each on its own thread (onnxruntime and the tokenizer
    release the GIL), the way `instances: N` runs them in the server."""
    models = model if isinstance(model, list) else [model]
    texts = [text] * batch
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        for m in models:
            m.embed(texts)
    from harness import busy_cores_total

    lats: list[list[float]] = [[] for _ in models]
    b0, w0 = busy_cores_total()
    c0 = _cpu_self()
    start = time.perf_counter()
    loops = [threading.Thread(target=_loop, args=(m, texts, start, seconds, lat)) for m, lat in zip(models, lats)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    wall = time.perf_counter() - start
    b1, w1 = busy_cores_total()
    cpu = (_cpu_self() - c0) / wall
    lat_ms = np.array([x for lat in lats for x in lat]) * 1000
    return {"batch": batch, "loops": len(models), "batches": len(lat_ms), "throughput": batch * len(lat_ms) / wall,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "server_cpu": cpu, "background_cpu": max(0.0, (b1 - b0) / (w1 - w0) - cpu)}
