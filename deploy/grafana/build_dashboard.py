"""Writes hotswap-dashboard.json (Grafana, Prometheus data source): `python build_dashboard.py`.

The JSON is generated so that every query is written once here, in PromQL over the families of
hotswap/serve/metrics.py, serve/openai_routes.py and generate/metrics.py; tests/deploy/test_grafana_dashboard.py
checks that the file is this script's output and that a running server exports every name
(tests/generate/test_dashboard.py does it for the text-generation row, on a generating server).
Rows: traffic and latency per model and backend/device, batching and queueing, what runs
(selected and skipped chain entries, device memory), failover, shadow parity, text generation.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("hotswap-dashboard.json")
SEL = 'model=~"$model",backend=~"$backend",device=~"$device"'  # model series (serve/metrics.py LABELS)
MODEL = 'model=~"$model"'  # failover, shadow and skipped-entry series carry the model only
BY = "model, backend, device"
RATE = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}


def quantile(q: float, family: str, selector: str = SEL, by: str = BY) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({family}_bucket{{{selector}}}[{RATE}])))"


def target(expr: str, legend: str, ref: str, instant: bool = False) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "instant": instant,
            "range": not instant, "format": "table" if instant else "time_series"}


def panel(title: str, targets: list[tuple[str, str]], unit: str, description: str, kind: str = "timeseries") -> dict:
    instant = kind == "table"
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}
            if not instant else {"showHeader": True},
            "targets": [target(expr, legend, chr(ord("A") + i), instant) for i, (expr, legend) in enumerate(targets)]}


TRAFFIC = [
    panel("Requests/s", [(f"sum by ({BY}) (rate(hotswap_request_success_total{{{SEL}}}[{RATE}]))",
                          "{{model}} {{backend}} {{device}}")], "reqps", "Answered inference requests (v2 and /v1)."),
    panel("Failures/s by reason", [(f"sum by (model, backend, reason) (rate(hotswap_request_failure_total{{{SEL}}}"
                                    f"[{RATE}]))", "{{model}} {{backend}} {{reason}}")], "reqps",
          "invalid_input, too_large, queue_full, timeout, backend_error, cancelled, shutting_down, ..."),
    panel("Request latency p50 / p99", [(quantile(0.5, "hotswap_request_duration_seconds"), "p50 {{model}} {{device}}"),
                                        (quantile(0.99, "hotswap_request_duration_seconds"),
                                         "p99 {{model}} {{device}}")], "s", "Time inside the server."),
    panel("OpenAI /v1 requests/s by status", [("sum by (model, status) (rate(hotswap_openai_requests_total"
                                               f"{{{MODEL}}}[{RATE}]))", "{{model}} {{status}}")], "reqps",
          "Requests to /v1/embeddings."),
]
BATCHING = [
    panel("Queue time p50 / p99", [(quantile(0.5, "hotswap_queue_duration_seconds"), "p50 {{model}} {{device}}"),
                                   (quantile(0.99, "hotswap_queue_duration_seconds"), "p99 {{model}} {{device}}")],
          "s", "Time a request waited for its batch."),
    panel("Rows per batch (mean and p99)",
          [(f"sum by ({BY}) (rate(hotswap_batch_size_sum{{{SEL}}}[{RATE}])) / sum by ({BY}) "
            f"(rate(hotswap_batch_size_count{{{SEL}}}[{RATE}]))", "mean {{model}} {{device}}"),
           (quantile(0.99, "hotswap_batch_size"), "p99 {{model}} {{device}}")], "short", "Dynamic batching at work."),
    panel("Backend time per batch p99", [(quantile(0.99, "hotswap_compute_infer_duration_seconds"),
                                          "infer {{model}} {{device}}"),
                                         (quantile(0.99, "hotswap_compute_input_duration_seconds"),
                                          "input {{model}} {{device}}"),
                                         (quantile(0.99, "hotswap_compute_output_duration_seconds"),
                                          "output {{model}} {{device}}")], "s",
          "Pre-processing, backend execution and post-processing per batch."),
    panel("Rows/s and in flight", [(f"sum by ({BY}) (rate(hotswap_inference_count_total{{{SEL}}}[{RATE}]))",
                                    "rows/s {{model}} {{device}}"),
                                   (f"sum by ({BY}) (rate(hotswap_execution_count_total{{{SEL}}}[{RATE}]))",
                                    "batches/s {{model}} {{device}}"),
                                   (f"sum by ({BY}) (hotswap_pending_requests{{{SEL}}})", "pending {{model}}")],
          "short", "Rows and backend calls per second; requests queued or running."),
]
HARDWARE = [
    panel("What runs each model", [(f"max by (model, backend, device, providers, precision, runtime) "
                                    f"(hotswap_backend_info{{{SEL}}}) * on (model, backend, device) group_left "
                                    f"(position) max by (model, backend, device, position) "
                                    f"(hotswap_backend_selected{{{SEL}}} == 1)", "")], "short",
          "The serving chain entry and what its backend reports (describe()).", "table"),
    panel("Skipped chain entries", [(f"max by (model, position, backend, reason) (hotswap_backend_skipped{{{MODEL}}} "
                                     "== 1)", "")], "short",
          "Entries passed over at the last load, with the reason.", "table"),
    panel("Device memory", [(f"sum by ({BY}) (hotswap_device_memory_bytes{{{SEL}}})", "{{model}} {{device}}")],
          "bytes", "Accelerator memory the backend holds (0 where the runtime does not say)."),
    panel("Model load time", [(f"max by ({BY}) (hotswap_model_load_seconds{{{SEL}}})", "{{model}} {{device}}")],
          "s", "Seconds the last load took."),
]
RESILIENCE = [
    panel("Failover switches", [(f"sum by (model, from, to, reason) (increase(hotswap_failover_total{{{MODEL}}}"
                                 f"[$__range]))", "{{model}} {{from}} -> {{to}} ({{reason}})")], "short",
          "Switches of the serving backend in the time range, by cause."),
    panel("Failover retries/s and switch time p99",
          [(f"sum by (model) (rate(hotswap_failover_retries_total{{{MODEL}}}[{RATE}]))", "retries/s {{model}}"),
           (quantile(0.99, "hotswap_failover_switch_seconds", MODEL, "model"), "switch p99 {{model}}")], "short",
          "Requests of failed batches retried elsewhere; time from the faulty batch to traffic on the next entry."),
    panel("Shadow batches/s by result", [(f"sum by (model, shadow, result) (rate(hotswap_shadow_batches_total"
                                          f"{{{MODEL}}}[{RATE}]))", "{{model}} {{shadow}} {{result}}")], "short",
          "match, mismatch, error, dropped."),
    panel("Shadow parity", [(quantile(0.99, "hotswap_shadow_max_abs_error", MODEL, "model, shadow"),
                             "max abs error p99 {{model}} {{shadow}}"),
                            (quantile(0.01, "hotswap_shadow_cosine", MODEL, "model, shadow"),
                             "cosine p1 {{model}} {{shadow}}"),
                            (quantile(0.99, "hotswap_shadow_duration_seconds", MODEL, "model, shadow"),
                             "shadow time p99 {{model}} {{shadow}}")], "short",
          "Worst differences between the serving backend and the shadow."),
]

GENERATION = [
    panel("Time to first token p50 / p99",
          [(quantile(0.5, "hotswap_generate_time_to_first_token_seconds"), "p50 {{model}} {{device}}"),
           (quantile(0.99, "hotswap_generate_time_to_first_token_seconds"), "p99 {{model}} {{device}}")], "s",
          "From a request's submission to its first generated token: waiting for a slot, then the prefill."),
    panel("Inter-token latency p50 / p99",
          [(quantile(0.5, "hotswap_generate_inter_token_latency_seconds"), "p50 {{model}} {{device}}"),
           (quantile(0.99, "hotswap_generate_inter_token_latency_seconds"), "p99 {{model}} {{device}}")], "s",
          "Time between a sequence's consecutive tokens: one engine step (decode and any prefill chunk fused in)."),
    panel("Tokens/s", [(f"sum by ({BY}) (rate(hotswap_generate_tokens_total{{{SEL}}}[{RATE}]))",
                        "generated {{model}} {{device}}"),
                       (f"sum by ({BY}) (rate(hotswap_generate_prompt_tokens_total{{{SEL}}}[{RATE}]))",
                        "prompt {{model}} {{device}}")], "short",
          "Tokens generated (all sequences) and prompt tokens submitted, per second."),
    panel("Running and waiting sequences",
          [(f"sum by ({BY}) (hotswap_generate_running_sequences{{{SEL}}})", "running {{model}} {{device}}"),
           (f"sum by ({BY}) (hotswap_generate_waiting_sequences{{{SEL}}})", "waiting {{model}} {{device}}"),
           (f"sum by ({BY}) (rate(hotswap_generate_cancelled_total{{{SEL}}}[{RATE}]))",
            "cancelled/s {{model}} {{device}}")], "short",
          "Sequences in the decode batch, waiting for a slot or in prefill, and clients that went away."),
    panel("KV cache use", [(f"max by ({BY}) (hotswap_generate_kv_cache_usage_ratio{{{SEL}}})",
                            "{{model}} {{device}}")], "percentunit",
          "KV token slots held (padding included) over generation.max_kv_tokens."),
    panel("KV cache size", [(f"sum by ({BY}) (hotswap_generate_kv_cache_bytes{{{SEL}}})", "bytes {{model}} {{device}}"),
                            (f"sum by ({BY}) (hotswap_generate_kv_cache_tokens{{{SEL}}})",
                             "token slots {{model}} {{device}}")], "short",
          "Bytes of the cache's key and value tensors, and the token slots they hold (rows x columns)."),
]


def variable(name: str, query: str) -> dict:
    return {"name": name, "label": name, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
            "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def dashboard() -> dict:
    panels: list[dict] = []
    y = 0
    for title, row in [("Traffic", TRAFFIC), ("Batching and queueing", BATCHING), ("What runs where", HARDWARE),
                       ("Failover and shadow parity", RESILIENCE), ("Text generation", GENERATION)]:
        panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        for i, item in enumerate(row):
            panels.append(item | {"gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)}})
        y += 8 * ((len(row) + 1) // 2)
    for number, item in enumerate(panels, start=1):
        item["id"] = number
    datasource = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                  "current": {}, "hide": 0}
    return {"title": "hotswap", "uid": "hotswap-backends", "tags": ["hotswap", "inference"], "schemaVersion": 39,
            "version": 1, "editable": True, "timezone": "", "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": [datasource,
                                    variable("model", "label_values(hotswap_backend_selected, model)"),
                                    variable("backend", 'label_values(hotswap_backend_selected{model=~"$model"}, '
                                                        "backend)"),
                                    variable("device", 'label_values(hotswap_backend_selected{model=~"$model",'
                                                       'backend=~"$backend"}, device)')]},
            "panels": panels, "annotations": {"list": []}}


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
