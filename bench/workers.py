"""`hotswap serve --workers 2` against `--workers 1`, side by side in one run; and the container's
cold start to ready.

Workloads (load from `hey`, one request = one row): the tiny ONNX network at concurrency 64 and
MiniLM (one short sentence) at concurrency 32. Rounds alternate 1, 2, 1, 2, ... workers so drift
on a shared machine hits both alike; the report gives the median requests/s of each and the ratio,
with the CPU the server tree and hey used (on a 2-core machine, hey competes with the workers).
A third configuration, "2 split", is two workers whose onnxruntime sessions each get
cores ÷ 2 intra-op threads: by default every worker sizes its threads for the whole machine.

    .venv/bin/python bench/workers.py [--seconds 10] [--rounds 2] [--image localhost/hotswap:cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from before_after import SHORT, body, minilm_model, tiny_model  # noqa: E402
from harness import BENCH, REPO, Server, free_port, log, machine_info, post_json, run_hey  # noqa: E402

WORKLOADS = [("tiny", "tiny", None, 64), ("minilm", "minilm", SHORT, 32)]
#: (label, workers, intra-op threads per onnxruntime session or None for onnxruntime's default)
CONFIGS = [("1", 1, None), ("2", 2, None), ("2 split", 2, max(1, (os.cpu_count() or 2) // 2))]


def start(workers: int, threads: int | None, models: list[dict], folder: Path,
          logs: Path) -> tuple[Server, int]:
    port = free_port()
    config = folder / f"workers{workers}.yaml"
    if threads is not None:
        models = [m | {"backends": [b | {"intra_op_threads": threads} for b in m["backends"]]} for m in models]
    config.write_text(json.dumps({"server": {"port": port, "log_level": "warning", "workers": workers},
                                  "models": models}))
    python = REPO / ".venv" / "bin" / "python"
    server = Server(f"workers{workers}", [str(python), "-m", "hotswap.cli", "serve", "--config", str(config)],
                    f"http://127.0.0.1:{port}/v2/health/ready", logs / f"workers{workers}.log", cwd=REPO)
    server.wait_ready()
    if workers > 1:  # ready answers once one worker listens: wait for all of them
        deadline = time.monotonic() + 120
        while _live_workers(port) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers not listening after 120 s")
            time.sleep(0.5)
    return server, port


def _live_workers(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("hotswap_workers "))


def measure(port: int, pid: int, workload: tuple, seconds: float, folder: Path) -> dict:
    name, model, text, concurrency = workload
    path = folder / f"{name}.json"
    path.write_bytes(body(model, text))
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    post_json(url, path.read_bytes())
    run_hey(url, path, concurrency, 2, None, pid)  # warm-up
    return run_hey(url, path, concurrency, seconds, None, pid)


def container_cold_start(image: str, runs: int) -> list[float]:
    """Seconds from `podman run` to /v2/health/ready answering 200, for the image's default command."""
    env = os.environ | {"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(REPO / "docker/containers.conf"))}
    times = []
    for i in range(runs):
        port, name = free_port(), f"hotswap-coldstart-{os.getpid()}-{i}"
        started = time.perf_counter()
        subprocess.run(["podman", "run", "-d", "--name", name, "-e", f"HOTSWAP_SERVER__PORT={port}",
                        "-e", "HOTSWAP_INFER_TOKEN=coldstart-token-0123456789", image],
                       check=True, capture_output=True, env=env, timeout=120)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.perf_counter() - started > 180:
                    raise RuntimeError("container not ready after 180 s")
                time.sleep(0.05)
            times.append(time.perf_counter() - started)
        finally:
            subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, env=env, timeout=60)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image", default="localhost/hotswap:cpu", help="'' skips the container cold start")
    p.add_argument("--coldstart-runs", type=int, default=3)
    args = p.parse_args()
    logs = BENCH / "logs" / "workers"
    samples: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = [tiny_model(folder), minilm_model()]
        for r in range(args.rounds):
            for label, workers, threads in CONFIGS:
                server, port = start(workers, threads, models, folder, logs)
                try:
                    for workload in WORKLOADS:
                        result = measure(port, server.pid, workload, args.seconds, folder)
                        samples.setdefault((workload[0], label), []).append(result)
                        log(f"round {r + 1} workers={label} {workload[0]} c={workload[3]}: "
                            f"{result['throughput']:.0f} req/s, non-200 {result['non_200']}, "
                            f"server {result['server_cpu']:.2f} cores, hey {result['hey_cpu']:.2f}")
                finally:
                    server.stop()
    cold = container_cold_start(args.image, args.coldstart_runs) if args.image else []
    report(samples, cold, args)


def report(samples: dict, cold: list[float], args: argparse.Namespace) -> None:
    rows = []
    labels = [label for label, _, _ in CONFIGS]
    print("\n| workload | c | " + " | ".join(f"workers={x} req/s" for x in labels) + " | "
          + " | ".join(f"{x} ÷ 1" for x in labels[1:]) + " | server cores | hey cores | non-200 |")
    print("|---" * (3 + 2 * len(labels)) + "|---|")

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    for name, _, _, concurrency in WORKLOADS:
        runs = {x: samples[(name, x)] for x in labels}
        row = {"workload": name, "concurrency": concurrency,
               **{f"rps {x}": med(runs[x], "throughput") for x in labels},
               **{f"server_cpu {x}": med(runs[x], "server_cpu") for x in labels},
               **{f"hey_cpu {x}": med(runs[x], "hey_cpu") for x in labels},
               "non_200": sum(r["non_200"] for x in labels for r in runs[x])}
        rows.append(row)
        print(f"| {name} | {concurrency} | " + " | ".join(f"{row[f'rps {x}']:.0f}" for x in labels) + " | "
              + " | ".join(f"{row[f'rps {x}'] / row['rps 1']:.2f}" for x in labels[1:]) + " | "
              + " / ".join(f"{row[f'server_cpu {x}']:.2f}" for x in labels) + " | "
              + " / ".join(f"{row[f'hey_cpu {x}']:.2f}" for x in labels) + f" | {row['non_200']} |")
    if cold:
        print(f"\ncontainer cold start to ready ({args.image}): median {statistics.median(cold):.2f} s over "
              f"{len(cold)} runs ({', '.join(f'{t:.2f}' for t in cold)})")
    out = BENCH / "results" / "workers.json"
    out.write_text(json.dumps({"machine": machine_info(), "seconds": args.seconds, "rounds": args.rounds,
                               "rows": rows, "container_cold_start_s": cold}, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
