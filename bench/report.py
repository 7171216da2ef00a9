"""Targets, the markdown section of docs/BENCHMARKS.md, and py-spy summaries."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

BEGIN, END = "<!-- throughput:begin (written by bench/throughput.py) -->", "<!-- throughput:end -->"


def aggregate(runs: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """One row per point over its rounds: medians of the numbers, sums of the counts, the
    throughput range, and every round's throughput/p50/p99 under `runs`."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        for field, value in group[0].items():
            if field in keys or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            values = [g[field] for g in group if isinstance(g.get(field), (int, float))]
            row[field] = statistics.median(values) if values else None
        for field in ("ok", "non_200", "attempts"):
            if field in row:
                row[field] = sum(g[field] for g in group)
        for field in ("status", "errors"):
            if field in row:
                merged = Counter()
                for g in group:
                    merged.update(g[field])
                row[field] = dict(merged)
        bgs = [g["background_cpu"] for g in group if g.get("background_cpu") is not None]
        row["background_cpu"] = max(bgs) if bgs else None
        row["rounds"] = len(group)
        row["throughput_range"] = [min(g["throughput"] for g in group), max(g["throughput"] for g in group)]
        row["runs"] = [{k: g.get(k) for k in ("throughput", "p50_ms", "p99_ms", "background_cpu")} for g in group]
        out.append(row)
    return out


def _row(served: list[dict], server: str, batched: bool, c: int) -> dict | None:
    return next((r for r in served if r["server"] == server and r["batched"] == batched
                 and r["concurrency"] == c), None)


def _raw(raw: list[dict], batch: int) -> dict | None:
    return next((r for r in raw if r["batch"] == batch), None)


def _div(a, b):
    return a / b if a is not None and b else None


def targets(raw: list[dict], served: list[dict]) -> list[dict]:
    hs32, hs32u = _row(served, "hotswap", True, 32), _row(served, "hotswap", False, 32)
    hs1, hs1u = _row(served, "hotswap", True, 1), _row(served, "hotswap", False, 1)
    lit, mls = _row(served, "litserve", True, 32), _row(served, "mlserver", True, 32)
    r1, r32 = _raw(raw, 1), _raw(raw, 32)
    t = lambda r: r["throughput"] if r else None  # noqa: E731
    p50 = lambda r: r["p50_ms"] if r else None  # noqa: E731
    gain_served, gain_raw = _div(t(hs32), t(hs32u)), _div(t(r32), t(r1))
    out = [
        ("hotswap ÷ raw throughput (c=32 batched vs raw batch 32)", _div(t(hs32), t(r32)), ">=", 0.90),
        ("hotswap ÷ LitServe throughput (c=32, both batched)", _div(t(hs32), t(lit)), ">=", 1.6),
        ("hotswap ÷ MLServer throughput (c=32, both batched)", _div(t(hs32), t(mls)), ">=", 1.4),
        ("p50 over raw at c=1, ms (hotswap batched c=1 − raw batch 1)",
         p50(hs1) - p50(r1) if hs1 and r1 else None, "<=", 1.0),
        ("batching gain ratio ((hs c32 batched ÷ unbatched) ÷ (raw b32 ÷ raw b1))",
         _div(gain_served, gain_raw), ">=", 0.9),
    ]
    rows = [{"name": n, "value": v, "op": op, "goal": g,
             "met": None if v is None else (v >= g if op == ">=" else v <= g)} for n, v, op, g in out]
    rows.append({"name": "(info) p50 over raw at c=1, unbatched hotswap, ms",
                 "value": p50(hs1u) - p50(r1) if hs1u and r1 else None, "op": "", "goal": None, "met": None})
    rows.append({"name": "(info) batching gain: hotswap c32 batched ÷ unbatched", "value": gain_served,
                 "op": "", "goal": None, "met": None})
    rows.append({"name": "(info) batching gain: raw b32 ÷ b1", "value": gain_raw, "op": "", "goal": None,
                 "met": None})
    return rows


def _f(v, digits=1):
    return "n/a" if v is None else f"{v:,.{digits}f}"


def section(res: dict) -> str:
    m, v, s = res["machine"], res["versions"], res["settings"]
    lines = [BEGIN, "",
             f"**Command:** `{res['command'].strip()}`  ",
             f"**Date:** {res['date']}  ",
             f"**Machine:** {m['nproc']} × {m['cpu_model']} (nproc {m['nproc']}), {m['ram_gib']} GiB RAM, "
             f"Linux {m['kernel']}, Python {m['python']}  ",
             "**Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + "  ",
             f"**Workload:** all-MiniLM-L6-v2 (`builtin:minilm` model.onnx), onnxruntime CPUExecutionProvider "
             f"with hotswap's default session options; one sentence of exactly {res['seq_len']} tokens per "
             f"request (incl. [CLS]/[SEP]); tokenizer → onnxruntime → mean pool → L2 norm everywhere.  ",
             f"**Load:** `hey -z {s['duration_s']:g}s -c N -m POST -disable-compression` after a "
             f"{s['warmup_s']:g} s warm-up at the same concurrency; raw = back-to-back batches for "
             f"{s['raw_s']:g} s. Batching on = max batch {s['max_batch']}, {s['delay_ms']:g} ms max wait "
             f"(hotswap `max_queue_delay_ms`, LitServe `batch_timeout`, MLServer `max_batch_time`); "
             f"off = max batch 1. Every point is measured in {s.get('rounds', 1)} round(s) (each round runs "
             f"every server once, restarting it); each number in the tables is the median over the rounds "
             f"(ratios: from those medians, and per round), errors are totals.  ",
             f"**CPU placement:** {s['placement']}", ""]
    lines += ["### Targets", "", "| target | value (from medians) | per round | goal | status |",
              "|---|---:|---:|---:|---|"]
    for t in res["targets"]:
        goal = f"{t['op']} {t['goal']:g}" if t["goal"] is not None else ""
        status = {True: "**met**", False: "**missed**", None: "n/a" if t["goal"] is not None else ""}[t["met"]]
        rounds = ", ".join(_f(v, 2) for v in t.get("per_round", []))
        lines.append(f"| {t['name']} | {_f(t['value'], 2)} | {rounds} | {goal} | {status} |")
    lines += ["", "### Results", "",
              "| server | batching | concurrency | throughput (req/s) | p50 ms | p99 ms | errors | server CPU "
              "(cores) | hey CPU (cores) | notes |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["raw"]:
        lines.append(f"| raw in-process | batch {r['batch']} | – | {_f(r['throughput'])} | {_f(r['p50_ms'])} | "
                     f"{_f(r['p99_ms'])} | 0 | {_f(r['server_cpu'], 2)} | – | sentences/s, per-batch latency"
                     f"{'; ' + _range(r) if r.get('rounds', 1) > 1 else ''}{_noisy(r, s)} |")
    for r in res["served"]:
        notes = [_range(r)] if r.get("rounds", 1) > 1 else []
        if r.get("avg_batch"):
            notes.append(f"avg batch {r['avg_batch']:.1f}")
        if r["non_200"]:
            notes.append("errors: " + ", ".join([f"HTTP {c}×{n}" for c, n in r["status"].items() if str(c) != "200"]
                                                + [f"{n}× {e[:60]}" for e, n in r["errors"].items()]))
        lines.append(f"| {r['server']} | {r['batching']} | {r['concurrency']} | {_f(r['throughput'])} | "
                     f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {r['non_200']} | {_f(r['server_cpu'], 2)} | "
                     f"{_f(r['hey_cpu'], 2)} | {'; '.join(notes)}{_noisy(r, s)} |")
    lines += ["", "![throughput and latency vs concurrency](throughput.png)", ""]
    if res.get("profile"):
        lines += _profile_lines(res["profile"])
    lines.append(END)
    return "\n".join(lines)


def _profile_lines(p: dict) -> list[str]:
    """The py-spy profile's tables: shares by thread, by frame inclusive and by leaf frame."""
    lines = ["### Profile (py-spy, hotswap batched, c=32)", "",
             f"{p['samples']} samples over {p['seconds']} s, `{p['command']}`; flame graph "
             f"`{p['svg']}` (gitignored); hotswap served {_f(p.get('throughput_under_profiler'))} req/s while "
             "sampled. Shares of the samples of Python threads (onnxruntime's own worker threads are "
             "native and not sampled), by thread, then by frame:", ""]
    lines += ["| thread | share |", "|---|---:|"] + [f"| {n} | {x:.1%} |" for n, x in p["threads"]]
    lines += ["", "| frame (inclusive) | share |", "|---|---:|"]
    lines += [f"| `{n}` | {x:.1%} |" for n, x in p["inclusive"]]
    lines += ["", "| frame (self, leaf) | share |", "|---|---:|"]
    lines += [f"| `{n}` | {x:.1%} |" for n, x in p["self"]]
    if p.get("metrics"):
        lines += ["", "Server-side split from hotswap's /metrics during the measured c=32 batched run: "
                  + ", ".join(f"{k} {val}" for k, val in p["metrics"].items()) + "."]
    lines.append("")
    return lines

def per_round(tgts: list[dict], raw_runs: list[dict], served_runs: list[dict], rounds: int) -> None:
    """Add to each target its value within each round, to show their spread."""
    for k in range(1, rounds + 1):
        for t, tk in zip(tgts, targets([r for r in raw_runs if r["round"] == k],
                                       [r for r in served_runs if r["round"] == k])):
            t.setdefault("per_round", []).append(tk["value"])

def _range(r: dict) -> str:
    lo, hi = r["throughput_range"]
    return f"{r['rounds']} rounds: {lo:.0f}–{hi:.0f}"


def _noisy(r: dict, s: dict) -> str:
    bg = r.get("background_cpu")
    return f"; ⚠ other load {bg:.2f} cores" if bg is not None and bg > s["noise_cores"] else ""


def update_doc(path: Path, body: str) -> None:
    """Replace the generated block of '## Throughput' (keeping anything else in the file and in
    the section outside the markers); create the section or the file when missing."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + body + text[end:]
    elif re.search(r"^## Throughput\s*$", text, re.M):
        m = re.search(r"^## Throughput\s*$", text, re.M)
        nxt = re.search(r"^## ", text[m.end():], re.M)
        stop = m.end() + nxt.start() if nxt else len(text)
        text = text[:m.end()] + "\n\n" + body + "\n\n" + text[stop:].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n## Throughput\n\n" + body + "\n"
    path.write_text(text.rstrip("\n") + "\n")


_WRAPPERS = ("threading.py", "concurrent/futures/", "<frozen runpy>", "typer/", "click/", "asyncio/runners.py",
             "uvicorn/_compat.py", "uvicorn/server.py", "hotswap/cli.py")


def summarise_collapsed(path: Path, top: int = 12) -> dict:
    """Per-thread and per-frame shares of py-spy's raw (collapsed, --threads) output: threads, the
    hottest leaf frames per thread, and inclusive shares of the non-wrapper frames."""
    threads, inclusive, leaf, total = Counter(), Counter(), {}, 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        m = re.match(r"\"?thread \(0?x?[0-9a-fA-F]+\):? ?(.*?)\"?$", frames[0])
        thread = (m.group(1) or "unnamed") if m else "?"
        frames = [_short(f) for f in frames[1:] if not f.startswith(("thread", "process"))]
        total += n
        threads[thread] += n
        for f in set(frames):
            if not any(w in f for w in _WRAPPERS):
                inclusive[f] += n
        if frames:
            leaf.setdefault(thread, Counter())[frames[-1]] += n
    if not total:
        return {"samples": 0, "threads": [], "inclusive": [], "self": []}
    return {"samples": total, "threads": [(k, v / total) for k, v in threads.most_common(4)],
            "inclusive": [(k, v / total) for k, v in inclusive.most_common(top)],
            "self": [(f"[{t}] {k}", v / total) for t, _ in threads.most_common(2)
                     for k, v in leaf[t].most_common(6)]}


def _short(frame: str) -> str:
    """'run (onnxruntime/capi/onnxruntime_inference_container.py:220)' -> shorter path."""
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    func, file, _ = m.groups()
    file = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", file)
    file = re.sub(r".*/work/main/", "", file)
    return f"{func} ({file})"
