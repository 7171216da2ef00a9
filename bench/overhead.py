"""Serving overhead: hotswap's request path against the bare HTTP stack, its peers, and raw MiniLM (issue 15).

    .venv/bin/python bench/overhead.py                         # full: 3 rounds of 8 s points, ~15 min
    .venv/bin/python bench/overhead.py --seconds 1 --rounds 1 --max-wait 0 --out /tmp/smoke.json
    .venv/bin/python bench/overhead.py --only tiny --skip-peers

In one run, load from one `hey` (pinned with taskset to --hey-cpus; servers not pinned):
  tiny  the tiny ONNX network (x [1, 8] -> y, z; one row per request: the serving path alone)
        through hotswap (JSON batched 32 / 2 ms and unbatched; binary tensor extension, batched),
        the bare-Starlette limit (bench/peers/bare_v2.py: parses the v2 JSON, answers a fixed
        body), MLServer and LitServe (bench/peers/tiny_*.py, onnxruntime, same batching), c=1 and 64;
  minilm  builtin:minilm through hotswap (one text per request, batched 32 / 2 ms; and as
        `instances: 2`, batches of 16, one onnxruntime thread each) at c=32 for texts of about 8,
        24 and 128 tokens, against the raw in-process pipeline (bench/raw.py) on batches of 32
        copies of the same text (and as two concurrent loops on 16, one thread each).
Each round starts every server once, in a rotated order, so drift on a noisy machine hits all
alike; medians over rounds are reported. Per point: requests/s, p50/p99, non-200 responses, the
server process tree's CPU per request, and for hotswap the share of it on its event loop (the
main thread; batches run on instance threads). Each c=1 point is measured again with `wrk` where
it is installed (apt package), whose latencies are to the microsecond where hey's summary rounds
to 0.1 ms and adds its own client time: the c=1 target is read from wrk's p50s. Each point is
tagged with the phase the two CPUs were in (bench/crosscore.py: on a VM they may or may not share a
cache, which slows a two-thread session by a quarter), and MiniLM's ratio is also given against
the raw rounds that ran with the CPUs near. Writes
bench/results/overhead-<date>.json (or --out) and prints the markdown tables for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead_setup as setup  # noqa: E402
import raw as rawbench  # noqa: E402
from crosscore import print_phases, tagged  # noqa: E402
from harness import (  # noqa: E402
    BENCH,
    REPO,
    ensure_venv,
    log,
    machine_info,
    run_hey,
    run_wrk,
    venv_versions,
    wait_quiet,
)
from throughput import PEER_PACKAGES  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per measured point")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each point, not measured")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every server; medians are reported")
    p.add_argument("--only", choices=("tiny", "minilm", "all"), default="all")
    p.add_argument("--skip-peers", action="store_true", help="leave out MLServer and LitServe")
    p.add_argument("--hey-cpus", default="1", help="taskset CPU list for hey ('' = not pinned)")
    p.add_argument("--quiet-cores", type=float, default=0.35,
                   help="before each point, wait until other processes use fewer cores than this")
    p.add_argument("--max-wait", type=float, default=120, help="at most this many seconds (0: do not wait)")
    p.add_argument("--out", type=Path, help="results file (default bench/results/overhead-<date>.json)")
    p.add_argument("--no-wrk", action="store_true", help="c=1 latency from hey alone (hey rounds to 0.1 ms)")
    return p.parse_args()


def measure(url: str, ep: setup.Endpoint, c: int, args: argparse.Namespace, pid: int, tmp: Path) -> dict:
    body_file = tmp / (ep.name.replace(" ", "-") + ".body")
    body_file.write_bytes(ep.body)
    if args.max_wait > 0:
        wait_quiet(args.quiet_cores, args.max_wait)
    hey = {"cpus": args.hey_cpus or None, "content_type": ep.content_type, "headers": ep.headers}
    run_hey(url, body_file, c, args.warmup, **hey)
    res = run_hey(url, body_file, c, args.seconds, server_pid=pid, **hey)
    if res["ok"] == 0:  # seen once from MLServer on a loaded machine: a stall longer than the point
        log(f"{ep.name} c={c}: no 200 answer in {res['total_s']} s; measuring the point again")
        res = run_hey(url, body_file, c, args.seconds, server_pid=pid, **hey)
    per_req = res["wall_s"] / res["ok"] * 1e6 if res["ok"] else None
    res["cpu_us"] = res["server_cpu"] * per_req if per_req else None
    # hotswap's event loop is its main thread (with one worker); batches run on instance threads
    res["main_thread_us"] = res["main_thread_cpu"] * per_req if per_req and ep.name.startswith("hotswap") else None
    if c == 1 and not args.no_wrk and shutil.which("wrk"):  # the same point again, timed to the µs
        wrk = run_wrk(url, body_file, c, args.seconds, args.hey_cpus or None, ep.content_type, ep.headers)
        res.update(wrk_p50_ms=wrk["p50_ms"], wrk_p99_ms=wrk["p99_ms"], wrk_rps=wrk["rps"])
        res["non_200"] += wrk["non_2xx"]
    return res


def measure_raw(ep: setup.Endpoint, args: argparse.Namespace, ctx: dict) -> dict:
    if "model" not in ctx:
        ctx["model"] = rawbench.load(ctx["model_dir"])
    models = ctx["model"]
    if ep.loops > 1:
        key = f"models-{ep.loops}"
        if key not in ctx:
            ctx[key] = [rawbench.load(ctx["model_dir"], ep.loops) for _ in range(ep.loops)]
        models = ctx[key]
    if args.max_wait > 0:
        wait_quiet(args.quiet_cores, args.max_wait)
    batch = setup.BATCH // ep.loops
    res = rawbench.measure(models, batch, args.seconds, args.warmup, ep.body.decode())
    res.update(ok=res["batches"] * batch, non_200=0, cpu_us=res["server_cpu"] / res["throughput"] * 1e6)
    return res


def run_contender(cont: setup.Contender, args: argparse.Namespace, ctx: dict, rnd: int, samples: dict) -> None:
    def keep(ep: setup.Endpoint, c: int, res: dict) -> None:
        res["round"] = rnd
        samples.setdefault((ep.name, c), []).append(res)
        log(f"{ep.name} c={c}: {res['throughput']:.0f}/s p50 {_fmt(res['p50_ms'])} ms p99 {_fmt(res['p99_ms'])} "
            f"ms non-200 {res['non_200']} server {_fmt(res['cpu_us'], 0)} µs/req")

    if cont.start is None:
        for ep in cont.endpoints:
            keep(ep, ep.levels[0], tagged(partial(measure_raw, ep, args, ctx)))
        return
    server, base = cont.start(ctx)
    try:
        server.wait_ready()
        for ep in cont.endpoints:
            answer = setup.post(base + ep.path, ep)
            if not ep.check(answer):
                raise SystemExit(f"{ep.name}: unexpected answer {json.dumps(answer)[:300]}")
            for c in ep.levels:
                keep(ep, c, tagged(partial(measure, base + ep.path, ep, c, args, server.pid, ctx["tmp"])))
                if server.proc.poll() is not None:
                    raise RuntimeError(f"{cont.name} died during {ep.name} c={c}; see {server.log_path}")
    finally:
        server.stop()


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(conts: list[setup.Contender], samples: dict) -> list[dict]:
    """One row per endpoint and concurrency: medians over the rounds, non-200 summed."""
    rows = []
    for cont in conts:
        for ep in cont.endpoints:
            for c in ep.levels:
                runs = samples[(ep.name, c)]
                med = {k: _median(runs, k) for k in ("throughput", "p50_ms", "p99_ms", "cpu_us", "wrk_p50_ms",
                                                  "main_thread_us")}
                rows.append({"name": ep.name, "server": cont.name, "workload": ep.workload, "body": ep.body_kind,
                             "batching": ep.batching, "concurrency": c, "rps": med["throughput"],
                             "p50_ms": med["p50_ms"], "p99_ms": med["p99_ms"], "cpu_us_per_req": med["cpu_us"],
                             "main_thread_us_per_req": med["main_thread_us"],
                             "wrk_p50_ms": med["wrk_p50_ms"],
                             "non_200": sum(r["non_200"] for r in runs),
                             "background_cpu": max((r.get("background_cpu") or 0.0) for r in runs),
                             "per_round_rps": [round(r["throughput"], 1) for r in runs],
                             "per_round_phase": [r.get("phase") for r in runs],
                             "near_rps": _median([r for r in runs if r.get("phase") == "near"], "throughput")})
    return rows


def targets(stat: dict) -> list[dict]:
    """The issue's ratios from `stat`: (endpoint name, concurrency) -> {"rps", "p50_ms"}."""
    def get(name: str, c: int, key: str = "rps") -> float | None:
        return stat.get((name, c), {}).get(key)

    def p50(name: str) -> float | None:  # c=1: wrk's, to the µs, where it ran
        return get(name, 1, "wrk_p50_ms") if get(bare, 1, "wrk_p50_ms") is not None else get(name, 1, "p50_ms")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = []
    hs, bare = "hotswap JSON batched", "bare Starlette"

    def add(name: str, value: float | None, op: str, goal: float | None) -> None:
        met = None if value is None or goal is None else (value >= goal if op == ">=" else value <= goal)
        out.append({"name": name, "value": value, "op": op, "goal": goal, "met": met})

    add("tiny c=64 JSON: hotswap ÷ bare Starlette, req/s", ratio(get(hs, 64), get(bare, 64)), ">=", 0.6)
    add("tiny c=64 JSON: hotswap ÷ MLServer, req/s", ratio(get(hs, 64), get("MLServer", 64)), ">=", 6.0)
    add("tiny c=64 JSON: hotswap ÷ LitServe, req/s", ratio(get(hs, 64), get("LitServe", 64)), ">=", None)
    for name in (hs, "hotswap JSON unbatched", "hotswap binary batched"):
        p50_ms, base = p50(name), p50(bare)
        add(f"tiny c=1: {name} p50 − bare p50, ms", None if p50_ms is None or base is None else p50_ms - base,
            "<=", 0.15 if name == hs else None)
    split = setup.SPLIT
    for n in setup.TEXTS:
        served, raw, goal = f"hotswap MiniLM {n} tok", f"raw MiniLM {n} tok", 1.0 if n == 8 else 0.9
        add(f"MiniLM {n} tokens c=32: served ÷ raw (batch 32), texts/s", ratio(get(served, 32), get(raw, 32)),
            ">=", goal)
        add(f"MiniLM {n} tokens c=32: served, {split} ÷ raw (batch 32), texts/s",
            ratio(get(f"{served}, {split}", 32), get(raw, 32)), ">=", goal)
        add(f"MiniLM {n} tokens c=32: served, {split} ÷ raw (batch 32) in its near-cache rounds, texts/s",
            ratio(get(f"{served}, {split}", 32), get(raw, 32, "near_rps")), ">=", goal)
        add(f"MiniLM {n} tokens c=32: served, {split} ÷ raw, {setup.INSTANCES} loops, texts/s",
            ratio(get(f"{served}, {split}", 32), get(f"{raw}, {setup.INSTANCES} loops", 32)), ">=", None)
    return [t for t in out if t["value"] is not None]


def per_round(tgts: list[dict], samples: dict, rounds: int) -> None:
    for k in range(rounds):
        stat = {key: {"rps": r["throughput"], "p50_ms": r["p50_ms"], "wrk_p50_ms": r.get("wrk_p50_ms")}
                for key, runs in samples.items() for r in runs if r["round"] == k}
        values = {t["name"]: t["value"] for t in targets(stat)}
        for t in tgts:
            t.setdefault("per_round", []).append(values.get(t["name"]))


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_tables(rows: list[dict], tgts: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.rounds} round(s) of {args.seconds:g} s points, medians; hey pinned to CPU "
          f"{args.hey_cpus or '(none)'}, servers not pinned; raw rows: texts/s and latency per batch.\n")
    print("| workload | server | body | batching | c | req/s | p50 ms | p99 ms | wrk p50 ms | non-200 "
          "| server CPU µs/req | of which event loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['name']} | {r['body']} | {r['batching']} | {r['concurrency']} | "
              f"{_fmt(r['rps'], 0)} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r.get('wrk_p50_ms'), 3)} | "
              f"{r['non_200']} | {_fmt(r['cpu_us_per_req'], 0)} | {_fmt(r.get('main_thread_us_per_req'), 0)} |")
    print_phases(rows)
    print("\n| ratio | value | target | met | per round |")
    print("|---|---|---|---|---|")
    for t in tgts:
        goal = "" if t["goal"] is None else f"{t['op']} {t['goal']:g}"
        met = {True: "yes", False: "**no**", None: ""}[t["met"]]
        rounds = ", ".join(_fmt(v) for v in t.get("per_round", []))
        print(f"| {t['name']} | {_fmt(t['value'])} | {goal} | {met} | {rounds} |")


def versions(ctx: dict) -> dict:
    import onnxruntime

    from hotswap import __version__

    out = {"hotswap": __version__, "onnxruntime": onnxruntime.__version__}
    for name, python in ctx["py"].items():
        out.update({(k if k == name else f"{k} ({name} venv)"): v
                    for k, v in venv_versions(python, [name, "onnxruntime"]).items()})
    return out


def main() -> None:
    args = parse_args()
    started, date = time.time(), dt.datetime.now().astimezone()
    sys.path.insert(0, str(REPO))
    from hotswap.models.minilm import prepare
    from hotswap.models.sources import hotswap_home

    ctx = {"tmp": Path(tempfile.mkdtemp(prefix="hotswap-overhead-")), "model_dir": None,
           "py": {} if args.skip_peers or args.only == "minilm" else {
               name: ensure_venv(name, PEER_PACKAGES[name], BENCH / f"requirements-{name}.txt")
               for name in ("mlserver", "litserve")}}
    try:
        if args.only != "minilm":
            setup.prepare(ctx)
        if args.only != "tiny":
            ctx["model_dir"] = prepare(hotswap_home()).base_dir
        conts = setup.contenders(ctx, args.only, not args.skip_peers)
        samples: dict = {}
        for rnd in range(args.rounds):
            shift = rnd % len(conts)
            log(f"round {rnd + 1}/{args.rounds}")
            for cont in conts[shift:] + conts[:shift]:
                run_contender(cont, args, ctx, rnd, samples)
        tokens = ({n: len(ctx["model"].tokenizer.encode(t).ids) for n, t in setup.TEXTS.items()}
                  if "model" in ctx else None)
        info = versions(ctx)
    finally:
        shutil.rmtree(ctx["tmp"], ignore_errors=True)
    rows = summarise(conts, samples)
    tgts = targets({(r["name"], r["concurrency"]): r for r in rows})
    per_round(tgts, samples, args.rounds)
    out = {"date": date.strftime("%Y-%m-%d %H:%M %Z"),
           "command": ("python bench/overhead.py " + shlex.join(sys.argv[1:])).strip(),
           "machine": machine_info(), "versions": info, "elapsed_s": round(time.time() - started),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "texts": {n: {"text": t, "tokens": (tokens or {}).get(n)} for n, t in setup.TEXTS.items()},
           "rows": rows, "targets": tgts,
           "samples": [{"name": k[0], "concurrency": k[1], **r} for k, runs in samples.items() for r in runs]}
    path = args.out or BENCH / "results" / f"overhead-{date.strftime('%Y-%m-%d')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    log(f"wrote {path}; {out['elapsed_s']} s")
    if tokens:
        log("MiniLM tokens per text: " + ", ".join(f"~{n}: {k}" for n, k in tokens.items()))
    print_tables(rows, tgts, args)


if __name__ == "__main__":
    main()
