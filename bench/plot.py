"""Plot a throughput results JSON: throughput and p50/p99 latency vs concurrency per server.

Run by bench/throughput.py with the bench/.venvs/tools interpreter (matplotlib lives there):
    python bench/plot.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"hotswap": "tab:blue", "litserve": "tab:orange", "mlserver": "tab:green", "raw": "black"}


def main(src: str, out: str) -> None:
    res = json.loads(open(src).read())
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(13, 5))
    series = {}
    for r in res["served"]:
        series.setdefault((r["server"], r["batched"]), []).append(r)
    for (server, batched), rows in series.items():
        rows.sort(key=lambda r: r["concurrency"])
        c = [r["concurrency"] for r in rows]
        style = "-" if batched else ":"
        label = f"{server} ({'batched' if batched else 'unbatched'})"
        thr = [r["throughput"] for r in rows]
        lo = [t - r.get("throughput_range", [t, t])[0] for t, r in zip(thr, rows)]
        hi = [r.get("throughput_range", [t, t])[1] - t for t, r in zip(thr, rows)]
        ax_t.errorbar(c, thr, yerr=[lo, hi], fmt=style, marker="o", color=COLORS[server], label=label, capsize=3)
        ax_l.plot(c, [r["p50_ms"] for r in rows], style, marker="o", color=COLORS[server], label=f"{label} p50")
        ax_l.plot(c, [r["p99_ms"] for r in rows], style, marker="^", color=COLORS[server], alpha=0.45,
                  label=f"{label} p99")
    if res["raw"]:
        b = [r["batch"] for r in res["raw"]]
        ax_t.plot(b, [r["throughput"] for r in res["raw"]], "--", marker="s", color="black",
                  label="raw in-process (x = batch size)")
        ax_l.plot(b, [r["p50_ms"] for r in res["raw"]], "--", marker="s", color="black",
                  label="raw per-batch p50 (x = batch size)")
    ticks = sorted({r["concurrency"] for r in res["served"]} | {r["batch"] for r in res["raw"]})
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency (clients, one sentence each)")
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_ylabel("throughput (sentences/s)")
    ax_t.set_ylim(bottom=0)
    ax_t.set_title("Throughput (median; bars: range over rounds)")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_title("Latency p50 (circles) / p99 (triangles)")
    ax_t.legend(fontsize=7)
    ax_l.legend(fontsize=6, ncol=2)
    m = res["machine"]
    fig.suptitle(f"all-MiniLM-L6-v2, seq 32, onnxruntime CPU — {m['nproc']} × {m['cpu_model']} — {res['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
