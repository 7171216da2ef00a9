"""deploy/grafana/: the text-generation row queries exactly the families a generating server exports
(tests/deploy/test_grafana_dashboard.py checks the other rows on a server without one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.generate.generate_support import MODEL

pytestmark = pytest.mark.slow

DASHBOARD = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "hotswap-dashboard.json")
                       .read_text())
NAME = re.compile(r"\bhotswap_generate_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def generation_panels() -> list[dict]:
    panels, row = [], None
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        elif row == "Text generation":
            panels.append(panel)
    return panels


def test_generation_row_has_the_engine_panels():
    titles = [p["title"] for p in generation_panels()]
    assert titles == ["Time to first token p50 / p99", "Inter-token latency p50 / p99", "Tokens/s",
                      "Running and waiting sequences", "KV cache use", "KV cache size"]


def test_every_generation_family_is_on_the_dashboard_and_exported(live):
    # One request first, so that the histograms have samples.
    reply = httpx.post(f"{live.url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                       timeout=120)
    assert reply.status_code == 200
    page = httpx.get(f"{live.url}/metrics").text
    samples = {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line.startswith("hotswap_generate_")}
    used = {name for p in generation_panels() for t in p["targets"] for name in NAME.findall(t["expr"])}
    assert sorted(used - samples) == []  # every queried name is a sample a generating server exports
    families = {_family(s) for s in samples}
    assert families == {_family(n) for n in used}  # and every family it exports has a panel
    assert len(families) == 10


def _family(sample: str) -> str:
    for suffix in SUFFIXES:
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample
