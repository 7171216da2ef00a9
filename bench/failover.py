"""Failover and shadow cost on MiniLM: requests lost, switch time, shadow overhead.

    .venv/bin/python bench/failover.py                     # about 3 minutes
    .venv/bin/python bench/failover.py --seconds 10        # a quick look

Serves builtin:minilm with `hotswap serve` in a subprocess. The primary is the test plugin
backend `fault` (tests/plugins/fault_backend, pip-installed into a temporary folder on the
server's PYTHONPATH): a real onnxruntime CPU session that starts raising on every call once a
trigger file exists. onnxruntime CPU is next in the chain.

1. cold: load at `--concurrency` (32) for `--seconds`; halfway, the trigger file appears.
   Requests lost = answers other than 200 (goal 0). Switch time = the server's own measure
   (model metadata `failover.history[].switch_ms`: first failed batch -> traffic on the next
   backend; goal <= 2 s).
2. standby: the same with `failover.standby: true` (goal <= 50 ms).
3. shadow: onnxruntime alone, with and without `shadow: {backend: onnxruntime, sample: 0.05}`,
   both servers up, measured in turn for `--rounds` rounds of `--seconds` at concurrency 32 and
   at 1 (medians): rows/s with ÷ without (goal >= 0.93), p50 at c=1 with minus without (goal
   <= 0.3 ms). `--only failover|shadow` runs one part.

Prints a markdown section for docs/BENCHMARKS.md; writes bench/results/failover-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, REPO, Server, free_port, log, machine_info  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog near the old stone bridge at dawn."
BODY = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}).encode()


def install_plugin(folder: Path) -> Path:
    """pip-install the fault plugin (from a copy: an in-tree build leaves build/ behind) into a folder."""
    source, site = folder / "fault_backend", folder / "site"
    shutil.copytree(REPO / "tests" / "plugins" / "fault_backend", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--target", str(site), str(source), "-q"], check=True)
    return site


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def serve(folder: Path, label: str, model: dict, site: Path) -> tuple[Server, str]:
    port = free_port()
    config = folder / f"{label}.yaml"
    config.write_text(json.dumps({"server": {"port": port, "log_level": "warning"}, "models": [model]}))
    env = {**os.environ, "PYTHONPATH": str(site), "HOTSWAP_BACKENDS": "onnxruntime,fault"}
    server = Server(label, [str(REPO / ".venv" / "bin" / "python"), "-m", "hotswap.cli", "serve", "--config",
                            str(config)], f"http://127.0.0.1:{port}/v2/health/ready",
                    BENCH / "logs" / f"failover-{label}.log", env=env, cwd=REPO)
    server.wait_ready()
    return server, f"http://127.0.0.1:{port}/v2/models/minilm"


async def load(url: str, concurrency: int, seconds: float, at_half=None) -> list[tuple[float, float, int]]:
    """(start offset s, latency s, status) per request, from `concurrency` clients; status 0 = no answer."""
    samples: list[tuple[float, float, int]] = []
    began = time.perf_counter()
    deadline = began + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def client(session: aiohttp.ClientSession) -> None:
        while (now := time.perf_counter()) < deadline:
            try:
                async with session.post(f"{url}/infer", data=BODY) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = 0
            samples.append((now - began, time.perf_counter() - now, status))

    async def trigger() -> None:
        await asyncio.sleep(seconds / 2)
        at_half()

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [client(session) for _ in range(concurrency)] + ([trigger()] if at_half else [])
        await asyncio.gather(*tasks)
    return samples


def summarise(samples: list[tuple[float, float, int]], seconds: float) -> dict:
    ok = sorted(lat for _, lat, status in samples if status == 200)
    return {"requests": len(samples), "ok": len(ok), "lost": len(samples) - len(ok),
            "rows_per_s": len(ok) / seconds, "p50_ms": 1000 * statistics.median(ok) if ok else None,
            "p99_ms": 1000 * ok[int(0.99 * (len(ok) - 1))] if ok else None}


def failover_run(folder: Path, site: Path, args: argparse.Namespace, standby: bool) -> dict:
    trigger = folder / f"broken-{standby}"
    trigger.unlink(missing_ok=True)
    model = {"name": "minilm", "source": "builtin:minilm",
             "backends": [{"name": "fault", "mode": "raise", "while_file": str(trigger)}, {"name": "onnxruntime"}],
             "failover": {"after_errors": 3, "standby": standby},
             "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2, "max_queue_size": 4096}}
    label = "standby" if standby else "cold"
    server, url = serve(folder, label, model, site)
    try:
        asyncio.run(load(url, args.concurrency, 2))  # warm-up
        samples = asyncio.run(load(url, args.concurrency, args.seconds, trigger.touch))
        history = get_json(url)["failover"]["history"]
    finally:
        server.stop()
    result = summarise(samples, args.seconds) | {"switches": history}
    result["switch_ms"] = history[0]["switch_ms"] if history else None
    log(f"{label}: lost {result['lost']} of {result['requests']}, switch {result['switch_ms']} ms")
    return result


def shadow_runs(folder: Path, site: Path, args: argparse.Namespace) -> dict:
    """Both servers up at once, measured in turn for `--rounds` rounds (medians): drift on a shared
    machine then hits with and without alike, instead of whichever ran second."""
    servers = {}
    try:
        for label, shadow in (("without", None), ("with", {"backend": {"name": "onnxruntime"}, "sample": 0.05})):
            model = {"name": "minilm", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}],
                     "shadow": shadow, "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2,
                                                    "max_queue_size": 4096}}
            servers[label] = serve(folder, f"shadow-{label}", model, site)
            asyncio.run(load(servers[label][1], args.concurrency, 2))  # warm-up
        rounds: dict[str, list] = {"without": [], "with": []}
        for _ in range(args.rounds):
            for label, (_, url) in servers.items():
                loaded = summarise(asyncio.run(load(url, args.concurrency, args.seconds)), args.seconds)
                single = summarise(asyncio.run(load(url, 1, args.seconds)), args.seconds)
                rounds[label].append({"c32": loaded, "c1": single})
                log(f"shadow {label}: {loaded['rows_per_s']:.0f} rows/s at c={args.concurrency}, "
                    f"p50 {single['p50_ms']:.2f} ms at c=1")
    finally:
        for server, _ in servers.values():
            server.stop()
    out = {}
    for label, runs in rounds.items():
        out[label] = {level: {key: statistics.median(run[level][key] for run in runs)
                              for key in ("rows_per_s", "p50_ms", "lost")} for level in ("c32", "c1")}
        out[label]["rounds"] = runs
    return out


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = ["## Failover and shadow (bench/failover.py)", "",
             f"MiniLM; concurrency {args.concurrency}, {args.seconds:.0f} s per run; "
             f"{results['machine']['nproc']} × {results['machine']['cpu_model']}.", "",
             "| measure | result | goal |", "|---|---|---|"]
    if "cold" in results:
        cold, standby = results["cold"], results["standby"]
        lines += [f"| requests lost, cold failover | {cold['lost']} of {cold['requests']} | 0 |",
                  f"| requests lost, with standby | {standby['lost']} of {standby['requests']} | 0 |",
                  f"| first failed batch → traffic on next, cold | {cold['switch_ms']} ms | ≤ 2000 ms |",
                  f"| the same with `standby: true` | {standby['switch_ms']} ms | ≤ 50 ms |"]
    if "shadow" in results:
        shadow = results["shadow"]
        ratio = shadow["with"]["c32"]["rows_per_s"] / shadow["without"]["c32"]["rows_per_s"]
        delta = shadow["with"]["c1"]["p50_ms"] - shadow["without"]["c1"]["p50_ms"]
        lines += [f"| throughput with shadow 5 % ÷ without (c={args.concurrency}, median of {args.rounds} "
                  f"alternations) | {ratio:.3f} | ≥ 0.93 |",
                  f"| p50 at c=1, shadow on − off | {delta:+.3f} ms | ≤ 0.3 ms |"]
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="shadow on/off alternations (medians)")
    parser.add_argument("--only", choices=["failover", "shadow"], help="run one part only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotswap-failover-") as tmp:
        folder = Path(tmp)
        site = install_plugin(folder)
        results = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "machine": machine_info()}
        if args.only != "shadow":
            results["cold"] = failover_run(folder, site, args, standby=False)
            results["standby"] = failover_run(folder, site, args, standby=True)
        if args.only != "failover":
            results["shadow"] = shadow_runs(folder, site, args)
    out = BENCH / "results" / f"failover-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results, args))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
