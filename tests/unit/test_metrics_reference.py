"""README's metrics reference is the registry's truth: every family hotswap registers, with its
exposed name, type, labels, buckets and help text, and nothing else. Dashboards and alerts are
written from that table, so a renamed family, a lost label or a moved bucket must show there."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from hotswap.generate.metrics import families
from hotswap.serve.metrics import Metrics

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- metrics table: tests/unit/test_metrics_reference.py -->", "<!-- end of metrics table -->"


def _row(family: Counter | Gauge | Histogram) -> str:
    name = family._name + ("_total" if family._type == "counter" else "")
    labels = ", ".join(family._labelnames) or "(none)"
    if family._type == "histogram":
        bounds = ", ".join(f"{b:g}" for b in family._upper_bounds[:-1])  # +Inf is implied
        kind = f"histogram ({bounds})"
    else:
        kind = family._type
    return f"| `{name}` | {kind} | {labels} | {family._documentation} |"


def expected_rows() -> list[str]:
    metrics = Metrics()
    found = [*vars(metrics).values(), *vars(families(metrics)).values()]
    return [_row(f) for f in found if isinstance(f, (Counter, Gauge, Histogram))]


def readme_rows() -> list[str]:
    text = README.read_text()
    table = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    return [line for line in table.strip().splitlines()[2:]]  # after the header and its rule


def test_readme_lists_every_metric_family_as_registered():
    want = expected_rows()
    assert len(want) == 35
    assert readme_rows() == want, "README's metrics table is stale; the current one:\n" + "\n".join(want)


def test_families_are_registered_once_per_registry():
    metrics = Metrics()
    assert families(metrics) is families(metrics)
    assert families(Metrics()) is not families(metrics)
