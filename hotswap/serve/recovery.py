"""Failover bookkeeping: the switch log (state, history, metrics) and the parity probe that
decides whether traffic may move back to the preferred chain entry."""

from __future__ import annotations

import logging
import time
from collections import deque

from hotswap.config import FailoverConfig
from hotswap.models.signature import Tensors
from hotswap.serve.metrics import Metrics
from hotswap.serve.runner import ModelRunner
from hotswap.serve.shadow import finite_or_text, parity, within

log = logging.getLogger("hotswap.failover")

HISTORY = 10
"""Switches kept in the model metadata."""


class SwitchLog:
    """One model's failover state as metadata shows it, and the metrics of every switch."""

    def __init__(self, model: str, metrics: Metrics) -> None:
        self._model, self._metrics = model, metrics
        self.state = "serving"  # serving (the preferred entry), failed_over, degraded
        self.since = time.time()
        self.reason = "loaded"
        self.history: deque[dict] = deque(maxlen=HISTORY)
        self.last_probe: dict | None = None

    def _set(self, state: str, reason: str) -> None:
        self.state, self.reason, self.since = state, reason, time.time()

    def switched(self, old: str, new: str, reason: str, seconds: float, faulty: bool, preferred: bool) -> None:
        """Traffic moved from `old` to `new`; `seconds` since the first failed batch (or the probe began)."""
        self._metrics.failover.labels(self._model, old, new, reason).inc()
        if faulty:
            self._metrics.failover_switch_seconds.labels(self._model).observe(seconds)
        self._set("serving" if preferred else "failed_over", reason)
        self.history.append({"at": self.since, "from": old, "to": new, "reason": reason,
                             "switch_ms": round(seconds * 1000, 3)})
        log.warning("model %s: traffic moved from %s to %s (%s) %.0f ms after %s", self._model, old, new, reason,
                    seconds * 1000, "the first failed batch" if faulty else "the probe started")

    def degraded(self, label: str, reason: str) -> None:
        """The serving backend is faulty and no later chain entry loaded: it keeps serving."""
        self._set("degraded", f"{reason}; no later chain entry loads")
        log.error("model %s: %s is faulty (%s) and no later chain entry loads; it keeps serving", self._model,
                  label, reason)

    def probe_failed(self, label: str, problem: str | None) -> None:
        self.last_probe = {"at": time.time(), "backend": label, "result": problem or "superseded"}
        log.warning("model %s: preferred entry %s not taken back: %s", self._model, label, problem or "superseded")

    def summary(self) -> dict:
        return {"state": self.state, "since": self.since, "reason": self.reason, "history": list(self.history),
                "last_probe": self.last_probe}


async def probe_parity(candidate: ModelRunner, current: ModelRunner, batches: list[Tensors],
                       policy: FailoverConfig) -> str | None:
    """Run recent batches on both runners (the first run warms the candidate up); None if they agree.

    With no recent batches there is nothing to compare: a candidate that loaded passes.
    """
    for inputs in batches:
        got = await candidate.infer(inputs, None)
        want = await current.infer(inputs, None)
        max_abs, cosine = parity(want, got)
        if not within(max_abs, cosine, policy.parity_atol, policy.parity_min_cosine):
            lowest = float(cosine.min()) if cosine.size else 1.0
            return (f"parity: max abs error {finite_or_text(max_abs)} (parity_atol {policy.parity_atol}), "
                    f"min cosine {lowest:.6f} (parity_min_cosine {policy.parity_min_cosine})")
    return None
