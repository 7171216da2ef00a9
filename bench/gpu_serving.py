"""MiniLM on an accelerator: hotswap served ÷ the same backend in-process, short to long texts.

    python bench/gpu_serving.py --device cuda:0 [--dtypes float16,float32] [--workers 1,4]
                                [--seconds 4] [--out results.json]

raw: hotswap's TorchBackend and text-embedding processor in this process, back-to-back batches
of BATCH copies of one text (tokenise, run, pool, copy back): the sequential ceiling of one
process. served: `hotswap serve` with the same backend options and batching (BATCH, 2 ms), hey
posting one text per v2 JSON request from CONCURRENCY connections. Both ran on one machine in
one run; the ratio served ÷ raw says whether the serving path or the accelerator is the limit.
GPU busy % is nvidia-smi's utilisation, sampled every 100 ms while hey runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import REPO, Server, free_port, log, machine_info, post_json, run_hey
from overhead_setup import TEXTS

BATCH, DELAY_MS, CONCURRENCY = 64, 2.0, 128


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtypes", default="float16,float32", help="comma-separated torch dtypes")
    p.add_argument("--workers", default="1,4", help="comma-separated `hotswap serve --workers` counts")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each point")
    p.add_argument("--out", type=Path)
    p.add_argument("--logs", type=Path, help="folder for the servers' logs (default: a temporary folder)")
    return p.parse_args()


def raw_points(device: str, dtype: str, seconds: float, warmup: float) -> dict[int, dict]:
    """Back-to-back batches of each text through hotswap's own backend and processor, in this process."""
    from hotswap.backends.torch_backend import TorchBackend
    from hotswap.models.minilm import prepare
    from hotswap.models.processing import make_processor
    from hotswap.models.sources import hotswap_home

    source = prepare(hotswap_home())
    backend = TorchBackend()
    options = TorchBackend.Options(device=device, dtype=dtype)
    signature = backend.load(source.artifact_for(TorchBackend.formats), options)
    processor = make_processor(source.processor, source.base_dir, signature)
    points = {}
    for n, text in TEXTS.items():
        texts = np.array([text.encode()] * BATCH, dtype=object)

        def one() -> None:
            prepared = processor.preprocess({"text": texts})  # noqa: B023 (called in this iteration only)
            processor.postprocess(prepared, backend.infer(prepared))

        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            one()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds or len(times) < 5:
            t0 = time.perf_counter()
            one()
            times.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
        tokens = len(processor.preprocess({"text": texts[:1]})["input_ids"][0])
        points[n] = {"throughput": BATCH * len(times) / wall, "p50_ms": statistics.median(times) * 1e3,
                     "tokens": tokens}
        log(f"raw {dtype} {n} tok ({tokens}): {points[n]['throughput']:.0f}/s, batch p50 "
            f"{points[n]['p50_ms']:.2f} ms")
    backend.close()
    return points


class GpuBusy:
    """nvidia-smi's GPU utilisation sampled in the background while a point runs."""

    percent: float | None = None
    proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuBusy:
        if not shutil.which("nvidia-smi"):  # a CPU run of this script: no utilisation to read
            return self
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        out = self.proc.communicate(timeout=10)[0]
        samples = [float(x) for x in out.split() if x.replace(".", "", 1).isdigit()]
        self.percent = statistics.mean(samples) if samples else None


def start_server(tmp: Path, logs: Path, device: str, dtype: str, workers: int) -> tuple[Server, int]:
    port = free_port()
    model = {"name": "minilm", "source": "builtin:minilm",
             "backends": [{"name": "torch", "device": device, "dtype": dtype}],
             "batching": {"max_batch_size": BATCH, "max_queue_delay_ms": DELAY_MS, "max_queue_size": 4096}}
    config = tmp / f"gpu-{dtype}-w{workers}.yaml"
    config.write_text(json.dumps({"server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
                                  "models": [model]}))
    cmd = [sys.executable, "-m", "hotswap.cli", "serve", "--config", str(config), "--workers", str(workers)]
    server = Server(f"hotswap-{dtype}-w{workers}", cmd, f"http://127.0.0.1:{port}/v2/health/ready",
                    logs / f"server-{dtype}-w{workers}.log", cwd=REPO)
    server.wait_ready()
    return server, port


def served_points(tmp: Path, args: argparse.Namespace, dtype: str, workers: int) -> dict[int, dict]:
    server, port = start_server(tmp, args.logs or tmp, args.device, dtype, workers)
    url, points = f"http://127.0.0.1:{port}/v2/models/minilm/infer", {}
    try:
        for n, text in TEXTS.items():
            body = tmp / f"text-{n}.json"
            body.write_text(json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                    "data": [text]}]}))
            answer = post_json(url, body.read_bytes())
            if len(answer["outputs"][0]["data"]) != 384:
                raise SystemExit(f"unexpected answer {json.dumps(answer)[:300]}")
            run_hey(url, body, CONCURRENCY, args.warmup, None)
            with GpuBusy() as busy:
                res = run_hey(url, body, CONCURRENCY, args.seconds, None, server.pid)
            res["gpu_busy_percent"] = busy.percent
            res["cpu_us"] = res["server_cpu"] * res["wall_s"] / res["ok"] * 1e6 if res["ok"] else None
            points[n] = res
            log(f"served {dtype} workers={workers} {n} tok: {res['throughput']:.0f}/s p50 {res['p50_ms']} ms "
                f"non-200 {res['non_200']} GPU {busy.percent}% server {res['server_cpu']:.2f} cores")
    finally:
        server.stop()
    return points


def main() -> None:
    args = parse_args()
    dtypes, workers = args.dtypes.split(","), [int(w) for w in args.workers.split(",")]
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
               "device": args.device, "batch": BATCH, "delay_ms": DELAY_MS, "concurrency": CONCURRENCY, "rows": []}
    with tempfile.TemporaryDirectory() as folder:
        for dtype in dtypes:
            raw = raw_points(args.device, dtype, args.seconds, args.warmup)
            for w in workers:
                for n, res in served_points(Path(folder), args, dtype, w).items():
                    results["rows"].append({"dtype": dtype, "workers": w, "text": n, "tokens": raw[n]["tokens"],
                                            "raw": raw[n], "served": res,
                                            "ratio": res["throughput"] / raw[n]["throughput"]})
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print("\n| dtype | workers | tokens | raw texts/s | served texts/s | served ÷ raw | p50 ms | GPU busy % "
          "| server cores |\n|---|---|---|---|---|---|---|---|---|")
    for row in results["rows"]:
        s = row["served"]
        print(f"| {row['dtype']} | {row['workers']} | {row['tokens']} | {row['raw']['throughput']:.0f} | "
              f"{s['throughput']:.0f} | {row['ratio']:.2f} | {s['p50_ms']} | {s['gpu_busy_percent']} | "
              f"{s['server_cpu']:.2f} |")


if __name__ == "__main__":
    main()
