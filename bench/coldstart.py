"""Cold start of the default model: first-run preparation and time to ready from the cache.

    .venv/bin/python bench/coldstart.py [--runs 3]

1. First run: `hotswap prepare builtin:minilm` into an empty $HOTSWAP_HOME (export to ONNX and
   torch.export, parity checks), timed as a whole process.
2. Cached: `hotswap serve --config examples/default.yaml` with that cache, timed from process
   start until GET /v2/health/ready answers 200, `--runs` times; also the first request's latency.
Writes the "Cold start" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- coldstart:begin (written by bench/coldstart.py) -->", "<!-- coldstart:end -->"
BODY = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["Hello there.", "Cold start."]}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_prepare(home: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hotswap.cli", "prepare", "builtin:minilm"], check=True,
                   env=os.environ | {"HOTSWAP_HOME": str(home)}, capture_output=True)
    return time.perf_counter() - started


def time_to_ready(home: Path) -> tuple[float, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hotswap.cli", "serve", "--config",
                             str(REPO / "examples" / "default.yaml"), "--port", str(port)],
                            env=os.environ | {"HOTSWAP_HOME": str(home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        ready = time.perf_counter() - started
        t0 = time.perf_counter()
        httpx.post(f"{url}/v2/models/minilm/infer", json=BODY, timeout=30).raise_for_status()
        return ready, time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## Cold start\n\n{block}\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        prepare_s = time_prepare(home)
        print(f"first-run preparation: {prepare_s:.1f} s")
        runs = [time_to_ready(home) for _ in range(args.runs)]
    for ready, first in runs:
        print(f"ready in {ready:.2f} s, first request {first * 1000:.0f} ms")
    ready_med = statistics.median(r for r, _ in runs)
    first_med = statistics.median(f for _, f in runs)
    section = "\n".join([
        f"**Command:** `.venv/bin/python bench/coldstart.py --runs {args.runs}`  ",
        f"**Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"**Machine:** {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        "",
        "| what | seconds |",
        "|---|---:|",
        f"| first run: `hotswap prepare builtin:minilm` into an empty cache (process start to exit: "
        f"load weights, export ONNX + torch.export, parity checks, manifest) | {prepare_s:.1f} |",
        f"| cached: `hotswap serve --config examples/default.yaml`, process start to /v2/health/ready = 200 "
        f"(median of {args.runs}: {', '.join(f'{r:.2f}' for r, _ in runs)}) | {ready_med:.2f} |",
        f"| cached: first request after ready (2 sentences) | {first_med:.3f} |",
    ])
    write_doc(section)


if __name__ == "__main__":
    main()
