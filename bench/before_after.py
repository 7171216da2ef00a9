"""Serving cost of this tree against an earlier commit, side by side in one run.

    .venv/bin/python bench/before_after.py --base e18cdbe            # ~6 min on 2 cores
    .venv/bin/python bench/before_after.py --base e18cdbe --seconds 8 --rounds 3
    .venv/bin/python bench/before_after.py --base be10e10 --minilm-instances 2 --minilm-batch 16 --concurrency 32

Both servers run from the same .venv (the base commit is checked out into a temporary git
worktree and imported from there), with the same config, one at a time, alternating A/B/A/B
per point so drift on a noisy machine hits both alike. Workloads: the tiny ONNX network
(8 -> 4, one row per request: the serving path alone) and MiniLM with a short (~8 token) and a
long (~128 token) text, at concurrency 1 and 32, load from `hey`. Reports median requests/s
and p50 per side and the ratio new / base; writes bench/results/before-after-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, REPO, Server, free_port, log, machine_info, post_json, run_hey  # noqa: E402

SHORT = "How do I reset my password?"
LONG = " ".join(["The quick brown fox jumps over the lazy dog near the old stone bridge at dawn."] * 8)


def tiny_model(folder: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from hotswap.testing import build_tiny_models

    tiny = build_tiny_models(folder)
    return {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}],
            "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2, "max_queue_size": 4096}}


def minilm_model(instances: int = 1, max_batch: int = 32) -> dict:
    return {"name": "minilm", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}],
            "instances": instances,
            "batching": {"max_batch_size": max_batch, "max_queue_delay_ms": 2, "max_queue_size": 4096}}


def body(model: str, text: str | None) -> bytes:
    if text is None:
        tensor = {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    else:
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}
    return json.dumps({"inputs": [tensor]}).encode()


def start(label: str, tree: Path, folder: Path, models: list[dict], logs: Path) -> tuple[Server, int]:
    port = free_port()
    config = folder / f"{label}.yaml"
    config.write_text(json.dumps({"server": {"port": port, "log_level": "warning"}, "models": models}))
    env = {**os.environ, "HOTSWAP_BACKENDS": "onnxruntime,torch"}
    python = REPO / ".venv" / "bin" / "python"
    server = Server(label, [str(python), "-m", "hotswap.cli", "serve", "--config", str(config)],
                    f"http://127.0.0.1:{port}/v2/health/ready", logs / f"{label}.log", env=env, cwd=tree)
    server.wait_ready()
    return server, port


def measure(port: int, pid: int, workload: tuple[str, str, str | None], concurrency: int, seconds: float,
            folder: Path) -> dict:
    name, model, text = workload
    path = folder / f"{name}.json"
    path.write_bytes(body(model, text))
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    post_json(url, path.read_bytes())
    run_hey(url, path, concurrency, 2, "1", pid)  # warm-up
    return run_hey(url, path, concurrency, seconds, "1", pid)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="e18cdbe", help="git revision to compare against")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per measured point")
    p.add_argument("--rounds", type=int, default=2, help="A/B alternations per point; medians reported")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--minilm-instances", type=int, default=1, help="MiniLM's `instances` (both sides)")
    p.add_argument("--minilm-batch", type=int, default=32, help="MiniLM's max_batch_size (both sides)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    workloads = [("tiny", "tiny", None), ("minilm-short", "minilm", SHORT), ("minilm-long", "minilm", LONG)]
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base_tree = folder / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base],
                       check=True, capture_output=True)
        try:
            models = [tiny_model(folder), minilm_model(args.minilm_instances, args.minilm_batch)]
            trees = {"base": base_tree, "new": REPO}
            samples: dict[tuple, list[dict]] = {}
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    server, port = start(label, tree, folder, models, BENCH / "logs")
                    try:
                        for workload in workloads:
                            for c in levels:
                                res = measure(port, server.pid, workload, c, args.seconds, folder)
                                log(f"{label} {workload[0]} c={c}: {res['throughput']:.0f} req/s "
                                    f"p50 {res['p50_ms']:.2f} ms non-200 {res['non_200']}")
                                samples.setdefault((workload[0], c, label), []).append(res)
                    finally:
                        server.stop()
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)],
                           capture_output=True)
    report(args, samples, workloads, levels)


def report(args: argparse.Namespace, samples: dict, workloads: list, levels: list[int]) -> None:
    rows = []
    for name, _, _ in workloads:
        for c in levels:
            base, new = samples[(name, c, "base")], samples[(name, c, "new")]
            row = {"workload": name, "concurrency": c,
                   "base_rps": statistics.median(r["throughput"] for r in base),
                   "new_rps": statistics.median(r["throughput"] for r in new),
                   "base_p50_ms": statistics.median(r["p50_ms"] for r in base),
                   "new_p50_ms": statistics.median(r["p50_ms"] for r in new),
                   "non_200": sum(r["non_200"] for r in base + new)}
            row["ratio"] = row["new_rps"] / row["base_rps"]
            rows.append(row)
    out = {"date": dt.date.today().isoformat(), "base": args.base, "seconds": args.seconds,
           "rounds": args.rounds, "minilm_instances": args.minilm_instances, "minilm_batch": args.minilm_batch,
           "machine": machine_info(), "rows": rows}
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / f"before-after-{out['date']}.json").write_text(json.dumps(out, indent=2))
    print(f"\n| workload | c | {args.base} req/s | new req/s | new / base | {args.base} p50 ms | new p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['concurrency']} | {r['base_rps']:.0f} | {r['new_rps']:.0f} | "
              f"{r['ratio']:.2f} | {r['base_p50_ms']:.2f} | {r['new_p50_ms']:.2f} |")


if __name__ == "__main__":
    main()
