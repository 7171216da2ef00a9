"""What-if runs for hotswap: the throughput benchmark's load against config (or session option)
variants of the hotswap server, to size the server changes suggested in docs/BENCHMARKS.md.

    .venv/bin/python bench/whatif.py                       # every variant, c=1,32, 15 s points
    .venv/bin/python bench/whatif.py --variants baseline,delay0 --repeat 2 --concurrency 1,8,32,64

Variants run in turn (ABAB... with --repeat) so slow drift of the machine shows up as spread.
Writes bench/results/whatif-<date>.json and prints a markdown table. Every variant is a config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import raw as rawbench  # noqa: E402
import servers  # noqa: E402
from harness import BENCH, log, run_hey, wait_quiet  # noqa: E402

#: name -> (description, max_batch, delay_ms, model config overrides, batching overrides)
VARIANTS = {
    "baseline": ("as bench/throughput.py: max batch 32, 2 ms", 32, 2.0, {}, None),
    "delay0": ("max_queue_delay_ms 0: dispatch whatever is queued, never wait", 32, 0.0, {}, None),
    "batch64": ("max_batch_size 64", 64, 2.0, {}, None),
    "instances2": ("instances 2 (onnxruntime intra-op threads 1 each)", 32, 2.0, {"instances": 2}, None),
    "nospin": ("onnxruntime allow_spinning: false", 32, 2.0,
               {"backends": [{"name": "onnxruntime", "allow_spinning": False}]}, None),
    "fixed_delay": ("adaptive_delay: false (always wait the full 2 ms, as Triton)", 32, 2.0, {},
                    {"adaptive_delay": False}),
    "unbatched": ("max_batch_size 1", 1, 2.0, {}, None),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--warmup", type=float, default=4)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--hey-cpus", default="1")
    a = p.parse_args()
    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants: {', '.join(unknown)}")
    tmp, logs, rows = Path(tempfile.mkdtemp(prefix="hotswap-whatif-")), BENCH / "results" / "logs", []
    for rep in range(a.repeat):
        for name in names:
            _, mb, delay, extra, batching = VARIANTS[name]
            target = servers.hotswap(tmp, logs, rawbench.SENTENCE, mb, delay, None, extra, f"whatif-{name}", batching)
            body = tmp / "body.json"
            body.write_bytes(target.body)
            try:
                target.server.wait_ready()
                for c in (int(x) for x in a.concurrency.split(",")):
                    wait_quiet(0.35, 120)
                    run_hey(target.url, body, c, a.warmup, a.hey_cpus)
                    r = run_hey(target.url, body, c, a.duration, a.hey_cpus, target.server.pid)
                    rows.append({"variant": name, "repeat": rep, **r})
                    log(f"{name:11} c={c:<3} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 "
                        f"{r['p99_ms']:6.1f} ms  errors {r['non_200']}  other {r['background_cpu']:.2f} cores")
            finally:
                target.server.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    date = dt.datetime.now().astimezone()
    out = BENCH / "results" / f"whatif-{date.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"date": date.isoformat(), "argv": sys.argv[1:], "rows": rows,
                               "variants": {n: VARIANTS[n][0] for n in names}}, indent=2))
    print("\n| variant | what | concurrency | throughput (req/s) | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {VARIANTS[r['variant']][0]} | {r['concurrency']} | {r['throughput']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non_200']} |")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
