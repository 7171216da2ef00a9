"""Start each server under test on a free loopback port; same model files, same batching knobs."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness import BENCH, REPO, Server, free_port

PEERS = BENCH / "peers"


@dataclass
class Target:
    server: Server
    url: str          # inference endpoint
    body: bytes       # one request: one sentence
    embedding: callable  # response JSON -> the 384 floats


def _v2_body(sentence: str, content_type: bool = False) -> bytes:
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [sentence]}
    if content_type:
        tensor["parameters"] = {"content_type": "str"}
    return json.dumps({"inputs": [tensor]}).encode()


def _v2_embedding(response: dict) -> list[float]:
    return response["outputs"][0]["data"]


def hotswap(tmp: Path, logs: Path, sentence: str, max_batch: int, delay_ms: float, cpus: str | None,
            extra: dict | None = None, label: str = "hotswap", batching: dict | None = None) -> Target:
    """`hotswap serve` with a generated config; `extra` overrides model keys, `batching` batching keys."""
    port = free_port()
    model = {"name": "minilm", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}],
             "batching": {"max_batch_size": max_batch, "max_queue_delay_ms": delay_ms, "max_queue_size": 4096,
                          **(batching or {})},
             **(extra or {})}
    config = {"server": {"host": "127.0.0.1", "port": port, "log_level": "warning"}, "models": [model]}
    path = tmp / f"{label}-b{max_batch}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    python = REPO / ".venv" / "bin" / "python"
    server = Server(label, [str(python), "-m", "hotswap.cli", "serve", "--config", str(path), "--port", str(port)],
                    f"http://127.0.0.1:{port}/v2/health/ready", logs / f"{label}-b{max_batch}.log",
                    cpus=cpus)
    return Target(server, f"http://127.0.0.1:{port}/v2/models/minilm/infer", _v2_body(sentence), _v2_embedding)


def litserve(python: Path, logs: Path, model_dir: Path, sentence: str, max_batch: int, delay_ms: float,
             cpus: str | None, script: str = "litserve_server.py") -> Target:
    """`script` (in bench/peers) takes --model-dir, --port, --max-batch-size and --batch-timeout."""
    port = free_port()
    cmd = [str(python), str(PEERS / script), "--model-dir", str(model_dir), "--port", str(port),
           "--max-batch-size", str(max_batch), "--batch-timeout", str(delay_ms / 1000)]
    env = {**os.environ, "LITSERVE_TELEMETRY": "0", "PYTHONUNBUFFERED": "1"}
    server = Server("litserve", cmd, f"http://127.0.0.1:{port}/health", logs / f"litserve-b{max_batch}.log",
                    env=env, cpus=cpus)
    return Target(server, f"http://127.0.0.1:{port}/predict", json.dumps({"text": sentence}).encode(),
                  lambda r: r["embedding"])


def mlserver(python: Path, tmp: Path, logs: Path, model_dir: Path, sentence: str, max_batch: int,
             delay_ms: float, cpus: str | None, model: str = "minilm",
             implementation: str = "mlserver_model.MiniLMRuntime") -> Target:
    """`implementation` is a runtime class in bench/peers; `model_dir` becomes parameters.uri."""
    port, grpc, metrics = free_port(), free_port(), free_port()
    root = tmp / f"mlserver-b{max_batch}"
    (root / model).mkdir(parents=True, exist_ok=True)
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc, "metrics_port": metrics,
                "debug": False, "load_models_at_startup": True}
    model_settings = {"name": model, "implementation": implementation,
                      "max_batch_size": max_batch if max_batch > 1 else 0,
                      "max_batch_time": delay_ms / 1000 if max_batch > 1 else 0.0,
                      "parameters": {"uri": str(model_dir)}}
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    (root / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = {**os.environ, "PYTHONPATH": str(PEERS), "PYTHONUNBUFFERED": "1"}
    mlserver_bin = python.parent / "mlserver"
    server = Server("mlserver", [str(mlserver_bin), "start", str(root)],
                    f"http://127.0.0.1:{port}/v2/models/{model}/ready", logs / f"mlserver-b{max_batch}.log",
                    env=env, cwd=root, cpus=cpus)
    return Target(server, f"http://127.0.0.1:{port}/v2/models/{model}/infer", _v2_body(sentence, True),
                  _v2_embedding)


def metrics(url: str) -> dict[str, float]:
    """Sums of hotswap's histogram _sum/_count series (all label sets)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name, value in re.findall(r"^(hotswap_\w+_(?:sum|count))(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def metrics_delta(before: dict, after: dict, wall: float) -> dict:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("hotswap_batch_size_count", 0) or 1
    requests = d.get("hotswap_queue_duration_seconds_count", 0) or 1
    return {"avg_batch": d.get("hotswap_batch_size_sum", 0) / batches,
            "queue_ms": 1000 * d.get("hotswap_queue_duration_seconds_sum", 0) / requests,
            "request_ms": 1000 * d.get("hotswap_request_duration_seconds_sum", 0) / requests,
            "input_ms_per_batch": 1000 * d.get("hotswap_compute_input_duration_seconds_sum", 0) / batches,
            "infer_ms_per_batch": 1000 * d.get("hotswap_compute_infer_duration_seconds_sum", 0) / batches,
            "output_ms_per_batch": 1000 * d.get("hotswap_compute_output_duration_seconds_sum", 0) / batches,
            "backend_busy": d.get("hotswap_compute_infer_duration_seconds_sum", 0) / wall}
