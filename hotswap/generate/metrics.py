"""Generation metrics, on the app's own registry, per (model, version, backend, device).

A companion of hotswap.serve.metrics: the families are registered once per `Metrics` object
(the first generation model of an app does it), so serve/metrics.py needs no change.
"""

from __future__ import annotations

import weakref

from prometheus_client import Counter, Gauge, Histogram

from hotswap.generate.sequence import Observer
from hotswap.serve.metrics import LABELS, Metrics

#: Time to first token spans queueing and prefill: wider than one batch's latency.
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class GenerationFamilies:
    """The metric families of text generation."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.ttft = Histogram("hotswap_generate_time_to_first_token_seconds", "From submission to the first "
                              "generated token (queue + prefill)", LABELS, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("hotswap_generate_inter_token_latency_seconds", "Time between a sequence's "
                             "consecutive tokens", LABELS, buckets=ITL_BUCKETS, registry=r)
        self.generated = Counter("hotswap_generate_tokens", "Tokens generated (sampled), all sequences",
                                 LABELS, registry=r)
        self.prompt = Counter("hotswap_generate_prompt_tokens", "Prompt tokens prefilled", LABELS, registry=r)
        self.cancelled = Counter("hotswap_generate_cancelled", "Sequences that left because their client "
                                 "went away", LABELS, registry=r)
        self.running = Gauge("hotswap_generate_running_sequences", "Sequences in the decode batch", LABELS,
                             registry=r)
        self.waiting = Gauge("hotswap_generate_waiting_sequences", "Sequences waiting for a slot or in prefill",
                             LABELS, registry=r)
        self.kv_tokens = Gauge("hotswap_generate_kv_cache_tokens", "KV-cache token slots held (rows x "
                               "columns of the padded batch)", LABELS, registry=r)
        self.kv_usage = Gauge("hotswap_generate_kv_cache_usage_ratio", "KV-cache slots held / max_kv_tokens",
                              LABELS, registry=r)
        self.kv_bytes = Gauge("hotswap_generate_kv_cache_bytes", "Bytes of the KV cache's tensors", LABELS,
                              registry=r)


_FAMILIES: weakref.WeakKeyDictionary[Metrics, GenerationFamilies] = weakref.WeakKeyDictionary()


def families(metrics: Metrics) -> GenerationFamilies:
    """The app's generation families, registered on first use."""
    if metrics not in _FAMILIES:
        _FAMILIES[metrics] = GenerationFamilies(metrics)
    return _FAMILIES[metrics]


class GenerationSeries(Observer):
    """The engine's observer for one series: every hook is a labelled child, looked up once."""

    def __init__(self, metrics: Metrics, labels: dict[str, str], max_kv_tokens: int) -> None:
        f = families(metrics)
        values = tuple(labels[k] for k in LABELS)
        self._ttft, self._itl = f.ttft.labels(*values), f.itl.labels(*values)
        self._generated, self.prompt = f.generated.labels(*values), f.prompt.labels(*values)
        self._cancelled = f.cancelled.labels(*values)
        self._running, self._waiting = f.running.labels(*values), f.waiting.labels(*values)
        self._kv_tokens, self._kv_usage = f.kv_tokens.labels(*values), f.kv_usage.labels(*values)
        self._kv_bytes = f.kv_bytes.labels(*values)
        self._max_kv = max_kv_tokens

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def tokens(self, count: int) -> None:
        self._generated.inc(count)

    def cancelled(self) -> None:
        self._cancelled.inc()

    def state(self, running: int, waiting: int, slots: int, kv_bytes: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._kv_tokens.set(slots)
        self._kv_usage.set(slots / self._max_kv)
        self._kv_bytes.set(kv_bytes)

    def retire(self) -> None:
        """The engine stopped: its gauges read 0 (the counters keep their history)."""
        self.state(0, 0, 0, 0)
