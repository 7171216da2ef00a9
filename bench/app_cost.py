"""hotswap's own CPU per inference request, in-process: no HTTP, no load generator, no other process.

    .venv/bin/python bench/app_cost.py [--concurrency 1,64] [--requests 2000] [--windows 15]
    .venv/bin/python bench/app_cost.py --profile [--concurrency 64] [--requests 12800]

N clients in this process call the ASGI app (`create_app`) directly, each sending the tiny model's
v2 JSON request and awaiting its answer, one after the other, as hey's connections do; the
protocol's per-request work (the disconnect signal in the scope) is done as hotswap's own
protocol does it. The app's CPU time per request is measured over `--windows` windows of
`--requests` requests and reported as the minimum and the median (this machine's noise only
ever adds). Each window alternates two apps side by side: `server.gc` as configured by default,
and CPython's own collector settings (`freeze_after_load: false`, `young_threshold: 700`), so the
ratio between them comes from one run; the collections each one made are counted too.

`--profile` instead runs one window per concurrency under cProfile, with the default collector
settings, and prints each module's share of the own time (cProfile inflates every call: read the
shares, not the microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hotswap.config import parse_config  # noqa: E402
from hotswap.serve.app import create_app  # noqa: E402
from hotswap.serve.disconnect import EXTENSION, DisconnectSignal  # noqa: E402
from hotswap.testing import build_tiny_models  # noqa: E402

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}).encode()
PATH = "/v2/models/tiny/infer"
SETTINGS = {"server.gc default": {}, "CPython's collector": {"freeze_after_load": False, "young_threshold": 700}}


def scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(BODY)).encode()),
                        (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
            "extensions": {EXTENSION: DisconnectSignal()}}


async def one_request(app, statuses: list[int]) -> None:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope(), receive, send)


async def client(app, count: int, statuses: list[int]) -> None:
    for _ in range(count):
        await one_request(app, statuses)
        for _ in range(3):  # the answer's way back and the next request's way in: loop turns for the others
            await asyncio.sleep(0)


async def window(app, concurrency: int, requests: int) -> tuple[float, int]:
    """CPU µs per request over one window, and the collections made in it."""
    statuses: list[int] = []
    before = sum(s["collections"] for s in gc.get_stats())
    start = time.process_time()
    await asyncio.gather(*(client(app, requests // concurrency, statuses) for _ in range(concurrency)))
    cpu_us = 1e6 * (time.process_time() - start) / len(statuses)
    if set(statuses) != {200}:
        raise SystemExit(f"not every answer was 200: {sorted(set(statuses))}")
    return cpu_us, sum(s["collections"] for s in gc.get_stats()) - before


def tiny_model(folder: Path) -> dict:
    tiny = build_tiny_models(folder)
    return {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}],
            "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2, "max_queue_size": 4096}}


async def measure(folder: Path, args: argparse.Namespace) -> dict:
    model = tiny_model(folder)
    results: dict = {}
    for concurrency in args.concurrency:
        samples: dict[str, list[tuple[float, int]]] = {label: [] for label in SETTINGS}
        for _ in range(args.windows):
            for label, gc_settings in SETTINGS.items():  # one app at a time: gc's settings are the process's
                config = parse_config({"server": {"model_roots": [str(folder)], "gc": gc_settings},
                                       "models": [model]}, "bench/app_cost.py")
                app = create_app(config)
                async with app.router.lifespan_context(app):
                    await window(app, concurrency, 200)  # warm-up: inline decision, adaptive delay
                    samples[label].append(await window(app, concurrency, args.requests))
        results[concurrency] = samples
    return results


def module_of(filename: str, function: str) -> str:
    """The row a function's own time is counted in: a hotswap module, a library, or a builtin."""
    if "/hotswap/" in filename:
        return filename.split("/hotswap/")[1].removesuffix(".py")
    if filename == "~":  # a builtin: named by what it is, e.g. "<method 'get' of 'dict' objects>"
        return "builtin " + function.split(" of ")[0].strip("<>")
    if "asyncio" in filename:
        return "asyncio"
    if filename.endswith("app_cost.py"):
        return "this benchmark's clients"
    parts = filename.split("/site-packages/")
    return parts[1].split("/")[0] if len(parts) == 2 else Path(filename).name


async def profile(folder: Path, args: argparse.Namespace) -> None:
    config = parse_config({"server": {"model_roots": [str(folder)]}, "models": [tiny_model(folder)]},
                          "bench/app_cost.py")
    for concurrency in args.concurrency:
        app = create_app(config)
        async with app.router.lifespan_context(app):
            await window(app, concurrency, 200)
            profiler = cProfile.Profile()
            profiler.enable()
            await window(app, concurrency, args.requests)
            profiler.disable()
        own: Counter[str] = Counter()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # {(file, line, name): (..., own s, ...)}
        for (filename, _, function), (_, _, own_s, _, _) in stats.items():
            own[module_of(filename, function)] += own_s
        total = sum(own.values())
        print(f"\nc={concurrency}: {1e6 * total / args.requests:.1f} µs own time per request under cProfile")
        print("| module | share of own time |\n|---|---|")
        for module, seconds in own.most_common(25):
            print(f"| {module} | {100 * seconds / total:.1f} % |")


def report(results: dict, requests: int) -> None:
    print("| c | collector | CPU µs/req, min | median | collections per 1,000 requests |")
    print("|---|---|---|---|---|")
    for concurrency, samples in results.items():
        for label, values in samples.items():
            cpu = [v[0] for v in values]
            per_k = 1000 * statistics.median(v[1] for v in values) / requests
            print(f"| {concurrency} | {label} | {min(cpu):.1f} | {statistics.median(cpu):.1f} | {per_k:.1f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,64", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--requests", type=int, default=2000, help="requests per window")
    parser.add_argument("--windows", type=int, default=15, help="windows per setting (min and median reported)")
    parser.add_argument("--profile", action="store_true", help="one window per concurrency under cProfile: "
                        "each module's share of the own time")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:  # the event loop uvicorn runs hotswap on
        from uvloop import run
    except ImportError:
        run = asyncio.run
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            run(profile(Path(tmp), args))
        else:
            report(run(measure(Path(tmp), args)), args.requests)


if __name__ == "__main__":
    main()
