"""Throughput benchmark: all-MiniLM-L6-v2, seq 32, onnxruntime CPU -- raw vs hotswap vs LitServe vs MLServer.

    .venv/bin/python bench/throughput.py                 # full run: 3 rounds, ~22 min on 2 cores
    .venv/bin/python bench/throughput.py --quick         # fewer, shorter points
    .venv/bin/python bench/throughput.py --only hotswap,raw

Writes bench/results/throughput-<date>.json, docs/throughput.png and the generated block of
the "## Throughput" section of docs/BENCHMARKS.md. Peer servers and the plotting/profiling
tools are installed into their own venvs under bench/.venvs/ (pins: bench/requirements-*.txt).
Load comes from `hey` (apt-get install hey), pinned with taskset to --hey-cpus.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import raw as rawbench  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402
from harness import BENCH, REPO, ensure_venv, log, machine_info, post_json, run_hey, venv_versions, wait_quiet  # noqa: E402,E501

RESULTS = BENCH / "results"
PEER_PACKAGES = {"litserve": ["litserve", "onnxruntime", "tokenizers", "numpy"],
                 "mlserver": ["mlserver", "onnxruntime", "tokenizers", "numpy", "fastapi<0.116", "uvloop<0.22"],
                 "tools": ["matplotlib", "py-spy"]}
ALL = ("raw", "hotswap", "litserve", "mlserver")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="c=1,32 only, 5 s points, peers batched only")
    p.add_argument("--only", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    p.add_argument("--rounds", type=int, help="rounds over every point; medians are reported (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measured point (default 10; quick 5)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each point (default 3; quick 2)")
    p.add_argument("--raw-seconds", type=float, help="seconds per raw batch size (default 8; quick 4)")
    p.add_argument("--concurrency", help="comma list (default 1,8,32,64; quick 1,32)")
    p.add_argument("--max-batch", type=int, default=32, help="max batch size when batching is on")
    p.add_argument("--delay-ms", type=float, default=2.0, help="max batching wait, ms")
    p.add_argument("--hey-cpus", default="1", help="taskset CPU list for hey ('' = not pinned)")
    p.add_argument("--server-cpus", default="", help="taskset CPU list for servers and raw ('' = not pinned)")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="py-spy a c=32 batched hotswap run: auto = when a hotswap target is missed")
    p.add_argument("--noise-cores", type=float, default=0.25,
                   help="other processes' CPU (cores) above which a point is re-measured once")
    p.add_argument("--no-docs", action="store_true", help="write only the JSON, not docs/")
    p.add_argument("--render", metavar="JSON", help="only redo docs/ (plot + section) from a results file")
    a = p.parse_args()
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in ALL]
    if bad:
        p.error(f"--only: unknown {', '.join(bad)}")
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (5 if a.quick else 10)
    a.warmup = a.warmup or (2 if a.quick else 3)
    a.raw_seconds = a.raw_seconds or (4 if a.quick else 8)
    a.concurrency = [int(c) for c in (a.concurrency or ("1,32" if a.quick else "1,8,32,64")).split(",")]
    return a


def check_embedding(target: servers.Target, reference: np.ndarray) -> None:
    got = np.asarray(target.embedding(post_json(target.url, target.body)), dtype=np.float32).reshape(-1)
    cos = float(got @ reference / (np.linalg.norm(got) * np.linalg.norm(reference)))
    if got.shape != reference.shape or cos < 0.9999:
        raise SystemExit(f"{target.server.name}: embedding differs from raw (shape {got.shape}, cosine {cos:.6f})")


def measure_point(target: servers.Target, c: int, args, body_file: Path, hotswap_metrics: str | None) -> dict:
    for attempt in (1, 2):
        wait_quiet(args.noise_cores + 0.1, 120)
        run_hey(target.url, body_file, c, args.warmup, args.hey_cpus)
        before = servers.metrics(hotswap_metrics) if hotswap_metrics else None
        res = run_hey(target.url, body_file, c, args.duration, args.hey_cpus, target.server.pid)
        if before is not None:
            res.update(servers.metrics_delta(before, servers.metrics(hotswap_metrics), res["total_s"] or args.duration))
        bg = res["background_cpu"] or 0.0
        log(f"  c={c:<3} {res['throughput']:8.1f} req/s  p50 {res['p50_ms'] or 0:7.1f} ms  "
            f"p99 {res['p99_ms'] or 0:7.1f} ms  errors {res['non_200']}  server {res['server_cpu']:.2f} "
            f"hey {res['hey_cpu']:.2f} other {bg:.2f} cores" + (f"  avg batch {res['avg_batch']:.1f}"
                                                              if "avg_batch" in res else ""))
        if bg <= args.noise_cores or attempt == 2:
            res["attempts"] = attempt
            return res
        log(f"  other processes used {bg:.2f} cores during the point; measuring it again")
    raise AssertionError


def run_server(name: str, batched: bool, args, ctx: dict) -> list[dict]:
    mb = args.max_batch if batched else 1
    tmp, logs, sentence, cpus = ctx["tmp"], RESULTS / "logs", rawbench.SENTENCE, args.server_cpus or None
    if name == "hotswap":
        target = servers.hotswap(tmp, logs, sentence, mb, args.delay_ms, cpus)
    elif name == "litserve":
        target = servers.litserve(ctx["py"]["litserve"], logs, ctx["model_dir"], sentence, mb, args.delay_ms, cpus)
    else:
        target = servers.mlserver(ctx["py"]["mlserver"], tmp, logs, ctx["model_dir"], sentence, mb,
                                  args.delay_ms, cpus)
    label = f"on (max {mb}, {args.delay_ms:g} ms)" if batched else "off (max 1)"
    log(f"{name}: batching {label}: starting")
    rows = []
    try:
        target.server.wait_ready()
        check_embedding(target, ctx["reference"])
        body_file = tmp / f"{name}.json"
        body_file.write_bytes(target.body)
        murl = target.url.split("/v2/")[0] + "/metrics" if name == "hotswap" else None
        for c in args.concurrency:
            res = measure_point(target, c, args, body_file, murl)
            rows.append({"server": name, "batched": batched, "batching": label, **res})
            if target.server.proc.poll() is not None:
                raise RuntimeError(f"{name} died during c={c}; see {target.server.log_path}")
    finally:
        target.server.stop()
    return rows


def profile_hotswap(args, ctx: dict, tools_py: Path) -> dict:
    """py-spy on the hotswap server during a c=32 batched hey run: an SVG flame graph, then
    collapsed stacks (with thread names) that are summarised into the doc."""
    pyspy = str(tools_py.parent / "py-spy")
    target = servers.hotswap(ctx["tmp"], RESULTS / "logs", rawbench.SENTENCE, args.max_batch, args.delay_ms,
                             args.server_cpus or None, label="hotswap-profile")
    seconds = 15
    try:
        target.server.wait_ready()
        body_file = ctx["tmp"] / "profile.json"
        body_file.write_bytes(target.body)
        wait_quiet(args.noise_cores + 0.1, 120)
        run_hey(target.url, body_file, 32, args.warmup, args.hey_cpus)
        murl = target.url.split("/v2/")[0] + "/metrics"
        before, result = servers.metrics(murl), {}
        hey = threading.Thread(target=lambda: result.update(
            run_hey(target.url, body_file, 32, 2 * seconds + 8, args.hey_cpus, target.server.pid)))
        hey.start()
        time.sleep(3)
        pid = str(target.server.pid)
        svg, raw_txt = RESULTS / "profile.svg", RESULTS / "profile-collapsed.txt"
        cmd = [pyspy, "record", "--pid", pid, "--duration", str(seconds), "--rate", "100", "--nonblocking"]
        subprocess.run([*cmd, "-o", str(svg)], check=True, capture_output=True)
        subprocess.run([*cmd, "--threads", "--format", "raw", "-o", str(raw_txt)], check=True, capture_output=True)
        dump = subprocess.run([pyspy, "dump", "--pid", pid], capture_output=True, text=True)
        (RESULTS / "profile-dump.txt").write_text(dump.stdout + dump.stderr)
        hey.join()
        summary = report.summarise_collapsed(raw_txt)
        summary["metrics"] = {k: round(v, 2) for k, v in servers.metrics_delta(before, servers.metrics(murl),
                                                                        result.get("total_s") or 1).items()}
        summary.update(seconds=seconds, svg=str(svg.relative_to(REPO)), throughput_under_profiler=result.get(
            "throughput"), command=" ".join([*cmd[:1], "record", "--pid", "<server>", *cmd[4:]]))
        summary["command"] = summary["command"].replace(pyspy, "py-spy")
        return summary
    finally:
        target.server.stop()


def render(out: Path, res: dict) -> None:
    """docs/throughput.png (plotted by the tools venv's matplotlib) and the BENCHMARKS.md section."""
    tools_py = ensure_venv("tools", PEER_PACKAGES["tools"], BENCH / "requirements-tools.txt")
    subprocess.run([str(tools_py), str(BENCH / "plot.py"), str(out), str(REPO / "docs" / "throughput.png")],
                   check=True)
    report.update_doc(REPO / "docs" / "BENCHMARKS.md", report.section(res))
    log("updated docs/BENCHMARKS.md (## Throughput) and docs/throughput.png")


def _versions(py: dict[str, Path], hotswap_version: str) -> dict[str, str]:
    """onnxruntime's and hotswap's versions, each peer's, and a peer venv's onnxruntime where it differs."""
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__, "hotswap": hotswap_version}
    for name, python in py.items():
        versions[name] = venv_versions(python, [name])[name]
        peer_ort = venv_versions(python, ["onnxruntime"])["onnxruntime"]
        if peer_ort != onnxruntime.__version__:
            versions[f"onnxruntime ({name} venv)"] = peer_ort
    return versions


def _run_rounds(args: argparse.Namespace, model, ctx: dict) -> tuple[list[dict], list[dict]]:
    """Every round: the raw loop at each batch size, then each selected server batched and not."""
    raw_runs: list[dict] = []
    served_runs: list[dict] = []
    for rnd in range(1, args.rounds + 1):
        log(f"round {rnd}/{args.rounds}")
        for b in (1, 8, 32, 64) if "raw" in args.only else ():
            wait_quiet(args.noise_cores + 0.1, 120)
            r = rawbench.measure(model, b, args.raw_seconds, 2)
            log(f"raw batch {b:<3} {r['throughput']:8.1f} sentences/s  p50 {r['p50_ms']:7.1f} ms  "
                f"p99 {r['p99_ms']:7.1f} ms  other {r['background_cpu']:.2f} cores")
            raw_runs.append({**r, "round": rnd})
        for name in ("hotswap", "litserve", "mlserver"):
            for batched in (True, False) if name in args.only else ():
                if batched or name == "hotswap" or not args.quick:
                    served_runs += [{**r, "round": rnd} for r in run_server(name, batched, args, ctx)]
    return raw_runs, served_runs


def _placement(args: argparse.Namespace) -> str:
    """Where hey, the servers and the raw loop ran, for the results."""
    placement = (f"hey pinned with `taskset -c {args.hey_cpus}` (and `-cpus {len(args.hey_cpus.split(','))}`)"
                 if args.hey_cpus else "hey not pinned")
    placement += (f"; servers and raw pinned to CPUs {args.server_cpus}" if args.server_cpus else
                  "; servers and raw not pinned (they may use every core, sharing hey's core)")
    return placement + (". hey runs on the same machine, so its CPU (column 'hey CPU') is taken from the server: a "
                        "known bias against every server alike, largest at high request rates.")


def main() -> None:
    args = parse_args()
    if args.render:
        return render(Path(args.render), json.loads(Path(args.render).read_text()))
    started = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    from hotswap import __version__ as hotswap_version
    from hotswap.models.minilm import prepare
    from hotswap.models.sources import hotswap_home

    log("preparing builtin:minilm")
    model_dir = prepare(hotswap_home()).base_dir
    py = {name: ensure_venv(name, PEER_PACKAGES[name], BENCH / f"requirements-{name}.txt")
          for name in ("litserve", "mlserver") if name in args.only}
    tools_py = None if args.no_docs and args.profile == "never" else ensure_venv(
        "tools", PEER_PACKAGES["tools"], BENCH / "requirements-tools.txt")
    versions = _versions(py, hotswap_version)
    if args.server_cpus:
        import os
        os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})
    model = rawbench.load(model_dir)
    rawbench.check_sentence(model)
    reference = model.embed([rawbench.SENTENCE])[0]
    ctx = {"tmp": Path(tempfile.mkdtemp(prefix="hotswap-bench-")), "model_dir": model_dir, "py": py,
           "reference": reference}
    raw_runs, served_runs = _run_rounds(args, model, ctx)
    del model
    raw_rows = report.aggregate(raw_runs, ("batch",))
    served = report.aggregate(served_runs, ("server", "batched", "concurrency"))
    tgts = report.targets(raw_rows, served)
    report.per_round(tgts, raw_runs, served_runs, args.rounds)
    missed = any(t["met"] is False for t in tgts)
    profile = None
    if "hotswap" in args.only and tools_py and (args.profile == "always" or (args.profile == "auto" and missed)):
        log("profiling hotswap (c=32, batched) with py-spy")
        profile = profile_hotswap(args, ctx, tools_py)
    placement = _placement(args)
    date = dt.datetime.now().astimezone()
    res = {"date": date.strftime("%Y-%m-%d %H:%M %Z"), "command": ("python bench/throughput.py " + shlex.join(
        sys.argv[1:])).strip(), "machine": machine_info(), "versions": versions, "seq_len": rawbench.SEQ_LEN,
        "sentence": rawbench.SENTENCE, "model_dir": str(model_dir), "raw": raw_rows, "served": served,
        "targets": tgts, "profile": profile, "elapsed_s": round(time.time() - started),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "raw_s": args.raw_seconds,
                     "max_batch": args.max_batch, "delay_ms": args.delay_ms, "hey_cpus": args.hey_cpus,
                     "server_cpus": args.server_cpus, "noise_cores": args.noise_cores, "placement": placement,
                     "concurrency": args.concurrency, "quick": args.quick, "only": args.only,
                     "rounds": args.rounds}}
    shutil.rmtree(ctx["tmp"], ignore_errors=True)
    out = RESULTS / f"throughput-{date.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(res, indent=2))
    log(f"wrote {out.relative_to(REPO)}")
    if not args.no_docs:
        render(out, res)
    for t in tgts:
        status = {True: "met", False: "MISSED", None: ""}[t["met"]]
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        log(f"{t['name']}: {value} {t['op']} {t['goal'] if t['goal'] is not None else ''} {status}")
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
