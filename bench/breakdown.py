"""Where a served MiniLM request's time goes: the instance threads' compute against the raw loop's,
the gap between an instance's batches, and each server thread's CPU, run-queue wait and sleep.

    .venv/bin/python bench/breakdown.py                          # 8 tokens, 2 instances x 16, c=32
    .venv/bin/python bench/breakdown.py --tokens 128 --instances 1 --max-batch 32 --rounds 3

One hotswap server (the overhead benchmark's MiniLM config) under `hey`, pinned as there. The
stage times come from the server's own /metrics (hotswap_compute_*), the thread figures from
/proc/<pid>/task/*/schedstat: CPU, time runnable but waiting for a core, and the rest (asleep:
waiting for work, the GIL or a lock). The raw loop runs the same batch size on a session sized as
one of `--instances` (bench/raw.py), alone, so "compute ÷ raw" is what sharing the cores with the
event loop and the load generator costs each batch. Writes bench/results/breakdown-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import raw as rawbench  # noqa: E402
import servers  # noqa: E402
from before_after import body  # noqa: E402
from harness import BENCH, REPO, log, machine_info, run_hey, wait_quiet  # noqa: E402
from overhead_setup import DELAY_MS, TEXTS  # noqa: E402

#: Environment variables that change the runtimes' threading: recorded with the results when set.
ENV_KNOBS = ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "RAYON_NUM_THREADS")
STAGES = ("compute_input", "compute_infer", "compute_output")
_SERIES = re.compile(r"^(hotswap_(?:compute_\w+_duration_seconds|queue_duration_seconds|batch_size)_(?:sum|count))"
                     r"\{[^}]*\} ([0-9.e+-]+)", re.M)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, choices=sorted(TEXTS), default=8)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--hey-cpus", default="1", help="taskset CPU list for hey ('' = not pinned)")
    return p.parse_args()


def metric_sums(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in _SERIES.finditer(text):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """tid -> (CPU seconds, seconds runnable but waiting for a core)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu_ns, wait_ns, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except OSError:  # a thread that ended meanwhile
            continue
        out[int(tid)] = (int(cpu_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def one_round(target: servers.Target, body_file: Path, args: argparse.Namespace) -> dict:
    base = target.url.split("/v2/")[0]
    wait_quiet(0.35, 60)
    m0, t0, w0 = metric_sums(base), thread_times(target.server.pid), time.perf_counter()
    hey = run_hey(target.url, body_file, args.concurrency, args.seconds, args.hey_cpus or None,
                  server_pid=target.server.pid)
    m1, t1, wall = metric_sums(base), thread_times(target.server.pid), time.perf_counter() - w0
    d = {k: v - m0.get(k, 0.0) for k, v in m1.items()}
    batches = d["hotswap_batch_size_count"]
    stage_ms = {s: d[f"hotswap_{s}_duration_seconds_sum"] / batches * 1000 for s in STAGES}
    compute_s = sum(d[f"hotswap_{s}_duration_seconds_sum"] for s in STAGES)
    cycle_ms = wall * args.instances / batches * 1000  # one instance's batch-to-batch period
    threads = sorted(({"main": tid == target.server.pid, "cpu": (c - t0[tid][0]) / wall,
                       "runq_wait": (w - t0[tid][1]) / wall} for tid, (c, w) in t1.items() if tid in t0),
                     key=lambda t: -t["cpu"])
    for t in threads:
        t["asleep"] = max(0.0, 1 - t["cpu"] - t["runq_wait"])
    return {"texts_per_s": hey["throughput"], "non_200": hey["non_200"], "cores_idle": 2 - hey["total_cpu"],
            "hey_cores": hey["hey_cpu"], "batches": batches, "mean_rows": d["hotswap_batch_size_sum"] / batches,
            "stage_ms": stage_ms, "compute_ms": compute_s / batches * 1000, "cycle_ms": cycle_ms,
            "gap_ms": cycle_ms - compute_s / batches * 1000, "instances_busy": compute_s / wall,
            "queue_ms": d["hotswap_queue_duration_seconds_sum"] / d["hotswap_queue_duration_seconds_count"] * 1000,
            "threads": [t for t in threads if t["cpu"] >= 0.01]}


def raw_batch_ms(args: argparse.Namespace, text: str) -> float:
    """Milliseconds per batch of the raw loop, alone, on a session sized like one served instance."""
    from hotswap.models.minilm import prepare
    from hotswap.models.sources import hotswap_home

    model = rawbench.load(prepare(hotswap_home()).base_dir, args.instances)
    wait_quiet(0.35, 60)
    res = rawbench.measure(model, args.max_batch, args.seconds, 1.0, text)
    return args.max_batch / res["throughput"] * 1000


def report(rounds: list[dict], raw_ms: float) -> None:
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: {r['texts_per_s']:.0f} texts/s, mean batch {r['mean_rows']:.1f}, "
              f"cores idle {r['cores_idle']:.2f}, hey {r['hey_cores']:.2f} cores, non-200 {r['non_200']}")
        stages = ", ".join(f"{s.removeprefix('compute_')} {ms:.2f}" for s, ms in r["stage_ms"].items())
        print(f"  per batch (ms): {stages}; compute {r['compute_ms']:.2f} = {r['compute_ms'] / raw_ms:.2f} × raw "
              f"({raw_ms:.2f}); period {r['cycle_ms']:.2f}, gap {r['gap_ms']:.2f}; instances busy "
              f"{r['instances_busy']:.2f}; queued {r['queue_ms']:.2f} ms per request")
        for t in r["threads"]:
            print(f"  {'event loop' if t['main'] else 'thread':10s} cpu {t['cpu']:.2f}  runnable-waiting "
                  f"{t['runq_wait']:.2f}  asleep {t['asleep']:.2f}")


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    date = dt.datetime.now().astimezone()
    text = TEXTS[args.tokens]
    tmp = Path(tempfile.mkdtemp(prefix="hotswap-breakdown-"))
    body_file = tmp / "body.json"
    body_file.write_bytes(body("minilm", text))
    raw_ms = raw_batch_ms(args, text)
    target = servers.hotswap(tmp, BENCH / "logs", text, args.max_batch, DELAY_MS, None,
                             extra={"instances": args.instances}, label="hotswap-breakdown")
    try:
        target.server.wait_ready()
        run_hey(target.url, body_file, args.concurrency, 2, args.hey_cpus or None)  # warm-up
        rounds = []
        for i in range(args.rounds):
            log(f"round {i + 1}/{args.rounds}")
            rounds.append(one_round(target, body_file, args))
    finally:
        target.server.stop()
    report(rounds, raw_ms)
    out = BENCH / "results" / f"breakdown-{date.strftime('%Y-%m-%d-%H%M')}.json"
    env = {k: os.environ[k] for k in ENV_KNOBS if k in os.environ}
    out.write_text(json.dumps({"date": date.strftime("%Y-%m-%d %H:%M %Z"), "settings": vars(args), "env": env,
                               "machine": machine_info(), "raw_batch_ms": raw_ms, "rounds": rounds}, indent=2))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
