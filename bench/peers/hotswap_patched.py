"""`hotswap serve` with a what-if applied in memory, to measure a server code change before making it.

    BENCH_ORT_CONFIG=session.intra_op.allow_spinning=0 python hotswap_patched.py serve --config FILE
    BENCH_BATCHER=adaptive python hotswap_patched.py serve --config FILE

BENCH_ORT_CONFIG adds onnxruntime session config entries (the backend exposes none).
BENCH_BATCHER=adaptive makes the batcher wait `max_queue_delay_ms` only while recent batches had
more than one row: a lone request at light load is dispatched at once instead of waiting the
full delay for company that does not come. hotswap's files are not modified.
"""

from __future__ import annotations

import asyncio
import os
import time

from hotswap.backends import onnxruntime_backend
from hotswap.serve.batcher import DynamicBatcher

_original = onnxruntime_backend.OnnxRuntimeBackend._session_options


def _session_options(self, options):
    so = _original(self, options)
    for item in filter(None, os.environ.get("BENCH_ORT_CONFIG", "").split(",")):
        key, _, value = item.partition("=")
        so.add_session_config_entry(key, value)
    return so


async def _adaptive_next_batch(self) -> list:
    """DynamicBatcher._next_batch, except that the delay applies only after a multi-row batch."""
    while (first := self._pop(None, 0)) is None:
        self._arrived.clear()
        await self._arrived.wait()
    batch, rows = [first], first.rows
    limit = self.config.max_batch_size
    delay = self.config.max_queue_delay_ms / 1000 if getattr(self, "_last_rows", limit) > 1 else 0.0
    deadline = first.enqueued + delay
    while rows < limit:
        nxt = self._pop(first.key, limit - rows)
        if nxt is not None:
            batch.append(nxt)
            rows += nxt.rows
            continue
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), remaining)
        except asyncio.TimeoutError:
            break
    self._last_rows = rows
    return batch


onnxruntime_backend.OnnxRuntimeBackend._session_options = _session_options
if os.environ.get("BENCH_BATCHER") == "adaptive":
    DynamicBatcher._next_batch = _adaptive_next_batch

if __name__ == "__main__":
    from hotswap.cli import main

    main()
