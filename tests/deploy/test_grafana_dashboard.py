"""deploy/grafana/: the dashboard is the generator's output, and a running server exports every
metric name its queries use."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from hotswap.config import parse_config
from hotswap.serve.app import create_app
from tests.api.api_support import infer_tiny, running_server, tiny_input

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "hotswap-dashboard.json").read_text())
NAME = re.compile(r"\bhotswap_[a-z0-9_]+")
#: Families whose series exist only once the event happened (a failover): declared, not sampled.
EVENT_ONLY = ("hotswap_failover",)


def queries() -> list[str]:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    return exprs + [v["definition"] for v in DASHBOARD["templating"]["list"] if "definition" in v]


def exposition(text: str) -> tuple[set[str], dict[str, str]]:
    """Sample names, and the declared families with their types, of a Prometheus text page."""
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    return samples, types


def declared(name: str, types: dict[str, str]) -> bool:
    """`name` is a sample name of a declared family (counter _total, histogram _bucket/_sum/_count)."""
    if types.get(name) in ("counter", "gauge"):  # prometheus_client declares counters as <name>_total
        return True
    return any(name.endswith(suffix) and types.get(name.removesuffix(suffix)) == "histogram"
               for suffix in ("_bucket", "_sum", "_count"))


def test_dashboard_is_the_generator_output():
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (GRAFANA / "hotswap-dashboard.json").read_text(), "run deploy/grafana/build_dashboard.py"


def test_dashboard_covers_models_backends_and_resilience():
    titles = {p["title"] for p in DASHBOARD["panels"]}
    for wanted in ("Requests/s", "Failures/s by reason", "Request latency p50 / p99", "Queue time p50 / p99",
                   "Rows per batch (mean and p99)", "Device memory", "Skipped chain entries", "Failover switches",
                   "Shadow batches/s by result"):
        assert wanted in titles
    assert {v["name"] for v in DASHBOARD["templating"]["list"]} == {"datasource", "model", "backend", "device"}
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    for expr in queries():  # no PromQL parser here: at least every bracket closes
        assert [expr.count(a) for a in "({["] == [expr.count(b) for b in ")}]"], expr


@pytest.fixture(scope="module")
def metrics_page(tiny, tmp_path_factory) -> str:
    """/metrics of a real server after traffic: a model whose chain skips an entry, with failover
    and a shadow on torch, plus an OpenAI request."""
    folder = tmp_path_factory.mktemp("tiny-folder")
    for artifact in (tiny.onnx, tiny.exported):
        shutil.copyfile(artifact, folder / artifact.name)
    config = parse_config({
        "server": {"model_roots": [str(folder)]},
        "models": [{"name": "tiny", "source": str(folder),
                    "backends": [{"name": "not-installed"}, {"name": "onnxruntime"}],
                    "inputs": [s.model_dump() for s in tiny.signature.inputs],  # torch.export needs them
                    "outputs": [s.model_dump() for s in tiny.signature.outputs],
                    "failover": {}, "shadow": {"backend": {"name": "torch"}, "sample": 1.0}}]})
    with running_server(create_app(config)) as server:
        client = server.client()
        for seed in range(4):
            x = tiny_input(3, seed)
            np.testing.assert_allclose(infer_tiny(client, "tiny", x).as_numpy("y"), tiny.reference({"x": x})["y"],
                                       atol=1e-5)
        client.close()
        assert httpx.post(f"{server.url}/v1/embeddings", json={"model": "tiny", "input": "hi"}).status_code == 400
        assert httpx.post(f"{server.url}/v2/models/tiny/infer", content=b"{").status_code == 400
        for _ in range(100):  # the shadow runs after the answer, off the request path
            page = httpx.get(f"{server.url}/metrics").text
            if re.search(r'hotswap_shadow_batches_total\{[^}]*result="match"[^}]*\} 4\.0', page):
                return page
            time.sleep(0.05)
        pytest.fail(f"the shadow did not match 4 batches:\n{page}")


def test_every_dashboard_metric_is_exported(metrics_page):
    samples, types = exposition(metrics_page)
    # The generation row's names are checked on a generating server (tests/generate/test_dashboard.py).
    used = {name for expr in queries() for name in NAME.findall(expr) if not name.startswith("hotswap_generate_")}
    assert len(used) >= 20
    missing = sorted(n for n in used if n not in samples and not (n.startswith(EVENT_ONLY) and declared(n, types)))
    assert missing == []
