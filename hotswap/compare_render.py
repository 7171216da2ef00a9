"""The `hotswap compare` report as one self-contained HTML file: tables and inline SVG plots,
no script, no stylesheet or font from elsewhere, so it can be attached to a review as is."""

from __future__ import annotations

import math
from html import escape

from hotswap.compare import CompareReport

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, PAD = 520, 260, 48

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td.l{text-align:left}
.fail{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}figure{display:inline-block;margin:0 1em 1em 0}
svg text{font-size:11px}"""


def _scale(values: list[float], log: bool) -> tuple[float, float]:
    if log:
        positive = [v for v in values if v > 0 and math.isfinite(v)] or [1e-9]
        return math.log10(min(positive)) - 0.2, math.log10(max(positive)) + 0.2
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    return 0.0, (max(finite) or 1.0) * 1.1


def _y(value: float, bounds: tuple[float, float], log: bool) -> float:
    low, high = bounds
    if log:
        value = math.log10(value) if value > 0 and math.isfinite(value) else low
    value = min(max(value, low), high) if math.isfinite(value) else high
    return HEIGHT - PAD - (value - low) / ((high - low) or 1) * (HEIGHT - 2 * PAD)


def _axes(title: str, unit: str, bounds: tuple[float, float], log: bool) -> list[str]:
    low, high = bounds
    parts = [f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 10}" y2="{HEIGHT - PAD}" stroke="#888"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>']
    for i in range(5):
        value = low + (high - low) * i / 4
        shown = f"{10 ** value:.1e}" if log else f"{value:.3g}"
        y = _y(10 ** value if log else value, bounds, log)
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{shown}</text>')
    parts.append(f'<text x="12" y="{PAD - 10}">{escape(unit)}</text>')
    return parts


def line_chart(title: str, unit: str, xs: list[int], series: dict[str, list[float]], log: bool = False) -> str:
    """One line per series over the batch sizes `xs` (evenly spaced)."""
    bounds = _scale([v for values in series.values() for v in values], log)
    step = (WIDTH - PAD - 30) / max(len(xs) - 1, 1)
    parts = _axes(title, unit, bounds, log)
    for i, x in enumerate(xs):
        parts.append(f'<text x="{PAD + 10 + i * step:.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{x}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">batch size</text>')
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = " ".join(f"{PAD + 10 + i * step:.1f},{_y(v, bounds, log):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{WIDTH - 12}" y="{PAD + 14 * k}" text-anchor="end" fill="{colour}">'
                     f'{escape(name)}</text>')
    return f'<svg width="{WIDTH}" height="{HEIGHT}" role="img">{"".join(parts)}</svg>'


def bar_chart(title: str, unit: str, bars: dict[str, float], limit: float | None = None) -> str:
    """One bar per entry, on a log scale (errors span decades); `limit` is drawn as a dashed line."""
    bounds = _scale([*bars.values(), *([limit] if limit else [])], log=True)
    width = (WIDTH - PAD - 20) / max(len(bars), 1)
    parts = _axes(title, unit, bounds, log=True)
    for k, (name, value) in enumerate(bars.items()):
        y = _y(value, bounds, log=True)
        x = PAD + 6 + k * width
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width * 0.7:.1f}" height="{HEIGHT - PAD - y:.1f}" '
                     f'fill="{COLOURS[k % len(COLOURS)]}"/>')
        parts.append(f'<text x="{x + width * 0.35:.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle">'
                     f'{escape(name[:18])}</text>')
    if limit:
        y = _y(limit, bounds, log=True)
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#b00" '
                     f'stroke-dasharray="4"/>')
    return f'<svg width="{WIDTH}" height="{HEIGHT}" role="img">{"".join(parts)}</svg>'


def _table(report: CompareReport) -> str:
    rows = ["<tr><th>#</th><th>backend</th><th>device</th><th>batch</th><th>p50 ms</th><th>p99 ms</th>"
            "<th>rows/s</th><th>max abs error</th><th>min cosine</th></tr>"]
    for e in report.entries:
        head = f'<td>{e.position}</td><td class="l">{escape(e.label)}</td>'
        if e.skipped:
            rows.append(f'<tr>{head}<td class="l" colspan="7">skipped: {escape(e.skipped)}</td></tr>')
            continue
        for r in e.results:
            rows.append(f'<tr>{head}<td class="l">{escape(e.device)}</td><td>{r.batch}</td><td>{r.p50_ms:.3f}</td>'
                        f"<td>{r.p99_ms:.3f}</td><td>{r.rows_per_s:.0f}</td><td>{r.max_abs_error:.2e}</td>"
                        f"<td>{r.min_cosine:.6f}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def render_html(report: CompareReport) -> str:
    """The whole report; every byte it needs is in the string."""
    ran = [e for e in report.entries if e.results]
    names = {e.position: f"#{e.position} {e.label}" for e in ran}
    failures = report.failures()
    checked = report.max_abs_error is not None or report.min_cosine is not None
    verdict = ("" if not checked else '<p class="ok">PASS: every entry within the thresholds</p>' if not failures
               else "".join(f'<p class="fail">FAIL: {escape(f)}</p>' for f in failures))
    reference = names.get(report.reference, "none") if report.reference is not None else "none"
    plots = [
        line_chart("p50 latency", "ms", report.batches, {names[e.position]: [r.p50_ms for r in e.results]
                                                          for e in ran}, log=True),
        line_chart("throughput", "rows/s", report.batches, {names[e.position]: [r.rows_per_s for r in e.results]
                                                             for e in ran}),
        bar_chart("max abs error vs reference", "abs", {names[e.position]: e.max_abs_error for e in ran},
                  report.max_abs_error),
    ]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>hotswap compare: {escape(report.model)}"
            f"</title><style>{STYLE}</style></head><body><h1>hotswap compare: {escape(report.model)}</h1>"
            f"<p>Reference: {escape(reference)}. Batch sizes {', '.join(map(str, report.batches))}; "
            f"{report.runs} timed runs each after one warm-up. Thresholds: max abs error "
            f"{report.max_abs_error}, min cosine {report.min_cosine}.</p>{verdict}"
            f"{''.join(f'<figure>{p}</figure>' for p in plots)}{_table(report)}</body></html>")
