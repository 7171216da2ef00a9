"""Soak: many requests, some hostile, live swaps, memory watched; nothing may be lost.

    .venv/bin/python bench/soak.py                       # 50,000 requests at concurrency 64
    .venv/bin/python bench/soak.py --requests 5000       # a quick look

Serves builtin:minilm with tokens and `model_control: explicit` (as `hotswap serve` does),
then sends a mix from `--concurrency` clients: valid requests of three sizes (80 % one 8-word
text, 17 % four 24-word texts, 3 % eight 64-word texts: MIX), and `--hostile` of requests an
attacker would send (invalid UTF-8, wrong JSON types, too many rows, a body over the limit,
an oversized element, deep nesting, a wrong token, bad JSON). Meanwhile it swaps the backend
`--swaps` times (onnxruntime <-> torch).

A request is *lost* when its answer is not the one intended: 200 for valid requests (503 with
Retry-After is allowed while the queue is full), the designed 4xx for hostile ones; a
connection error or a 5xx is lost too. Reports lost requests, the server's RSS at start
(after 500 warm-up requests, at rest), peak and end (5 s after the last answer, at rest), and p50/p99 of the
valid requests; writes bench/results/soak-<date>.json. Start is measured after one swap round
trip (onnxruntime -> torch -> onnxruntime) in the warm-up, so loading torch's runtime, which
stays mapped once loaded, is not counted as growth; the RSS before any swap is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, REPO, Server, free_port, log, machine_info  # noqa: E402

TOKEN = "soak-admin-token-0123456789"
WORDS = "the quick brown fox jumps over the lazy dog near an old stone bridge at dawn".split()


def text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


#: (rows, words per text, weight): mostly search-query sized, some passages, a few longer batches,
#: as an embedding service sees them; light enough that 50,000 requests take minutes on 2 cores.
MIX = [(1, 8, 80), (4, 24, 17), (8, 64, 3)]


def valid(rng: random.Random) -> tuple[str, bytes, dict, set[int]]:
    rows, words = rng.choices([(r, w) for r, w, _ in MIX], weights=[n for _, _, n in MIX])[0]
    body = {"inputs": [{"name": "text", "shape": [rows], "datatype": "BYTES",
                        "data": [text(words, rng) for _ in range(rows)]}]}
    return "valid", json.dumps(body).encode(), {}, {200, 503}


def _bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def hostile(rng: random.Random, max_body: int) -> tuple[str, bytes, dict, set[int]]:
    kind = rng.choice(["utf8", "datatype", "rows", "body", "element", "nesting", "token", "json"])
    headers: dict[str, str] = {}
    if kind == "utf8":
        raw = _bytes_tensor([b"fine", b"\xff\xfe\xfd"])
        header = json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        headers["Inference-Header-Content-Length"] = str(len(header))
        return kind, header + raw, headers, {400}
    if kind == "datatype":
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": {"x": 1}, "data": ["a"]}]}
        return kind, json.dumps(body).encode(), headers, {400}
    if kind == "rows":
        body = {"inputs": [{"name": "text", "shape": [5000], "datatype": "BYTES", "data": ["a"] * 5000}]}
        return kind, json.dumps(body).encode(), headers, {413}
    if kind == "body":
        return kind, b"x" * (max_body + 1), headers, {413}
    if kind == "element":
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a" * (2**20 + 10)]}]}
        return kind, json.dumps(body).encode(), headers, {413}
    if kind == "nesting":
        data: list = ["a"]
        for _ in range(900):
            data = [data]
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": data}]}
        return kind, json.dumps(body).encode(), headers, {400}
    if kind == "token":
        headers["Authorization"] = "Bearer wrong-token-wrong-token"
        return kind, valid(rng)[1], headers, {401}
    return kind, b'{"inputs": [', headers, {400}


class RssWatcher(threading.Thread):
    """Samples the server's resident memory every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.samples.append(self.rss())
            except OSError:
                return


async def client(session: aiohttp.ClientSession, url: str, jobs: asyncio.Queue, results: list) -> None:
    while True:
        job = await jobs.get()
        if job is None:
            return
        kind, body, headers, expected = job
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"Authorization": f"Bearer {TOKEN}", **headers}) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status = f"{type(exc).__name__}"
        results.append((kind, status, status in expected, time.perf_counter() - started))


CHAINS = [[{"name": "torch", "device": "cpu"}], [{"name": "onnxruntime"}]]


async def swap(session: aiohttp.ClientSession, base: str, chain: list[dict], done: list) -> None:
    config = {"parameters": {"config": {"backends": chain}}}
    async with session.post(f"{base}/v2/repository/models/minilm/load", json=config,
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        done.append((chain[0]["name"], r.status, (await r.text())[:200]))
        log(f"swap {len(done)} to {chain[0]['name']}: {r.status}")


async def swapper(session: aiohttp.ClientSession, base: str, swaps: int, every_s: float, done: list) -> None:
    for i in range(swaps):
        await asyncio.sleep(every_s)
        await swap(session, base, CHAINS[i % 2], done)


async def round_trip(base: str) -> list:
    """Swap to torch and back once, so both runtimes have been loaded before `start` is measured."""
    done: list = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for chain in CHAINS:
            await swap(session, base, chain, done)
    return done


async def drive(base: str, args: argparse.Namespace, max_body: int) -> tuple[list, list]:
    rng = random.Random(args.seed)
    jobs: asyncio.Queue = asyncio.Queue()
    for _ in range(args.requests):
        jobs.put_nowait(hostile(rng, max_body) if rng.random() < args.hostile else valid(rng))
    for _ in range(args.concurrency):
        jobs.put_nowait(None)
    results: list = []
    swaps: list = []
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        url = f"{base}/v2/models/minilm/infer"
        swap_task = asyncio.create_task(swapper(session, base, args.swaps, args.swap_every, swaps))
        await asyncio.gather(*(client(session, url, jobs, results) for _ in range(args.concurrency)))
        swap_task.cancel()
    return results, swaps


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--hostile", type=float, default=0.10, help="share of hostile requests")
    p.add_argument("--swaps", type=int, default=4)
    p.add_argument("--swap-every", type=float, default=20.0, help="seconds between swaps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warm-round-trip", dest="warm_round_trip", action="store_false",
                   help="measure start RSS before any swap (torch then loads during the run)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    max_body = 4 * 2**20
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "soak.yaml"
        config.write_text(json.dumps({
            "server": {"port": port, "log_level": "warning", "model_control": "explicit",
                       "auth": {"tokens": [{"scope": "admin", "env": "SOAK_TOKEN"}]},
                       "limits": {"max_body_bytes": max_body}},
            "models": [{"name": "minilm", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}],
                        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 2, "max_queue_size": 256}}]}))
        env = {**os.environ, "SOAK_TOKEN": TOKEN, "HOTSWAP_BACKENDS": "onnxruntime,torch"}
        python = REPO / ".venv" / "bin" / "python"
        server = Server("soak", [str(python), "-m", "hotswap.cli", "serve", "--config", str(config)],
                        f"http://127.0.0.1:{port}/v2/health/ready", BENCH / "logs" / "soak.log", env=env, cwd=REPO)
        server.wait_ready()
        watcher = RssWatcher(server.pid)
        base = f"http://127.0.0.1:{port}"
        warm = argparse.Namespace(**{**vars(args), "requests": 500, "hostile": 0.0, "swaps": 0})
        asyncio.run(drive(base, warm, max_body))  # thread pools and caches settle first
        first_rss = watcher.rss()
        if args.warm_round_trip:
            # The first swap to torch maps torch's runtime into the process for good (a one-time
            # cost, not a leak): start is measured once both runtimes have been loaded.
            asyncio.run(round_trip(base))
            asyncio.run(drive(base, warm, max_body))
        time.sleep(5)  # at rest, as end is
        start_rss = watcher.rss()
        watcher.start()
        started = time.perf_counter()
        try:
            results, swaps = asyncio.run(drive(base, args, max_body))
        finally:
            wall = time.perf_counter() - started
            time.sleep(5)  # at rest: the server trims its heap after an idle second (server.memory_trim)
            end_rss = watcher.rss()
            watcher.stop.set()
            server.stop()
    summarise(args, results, swaps, wall, {"before_any_swap": first_rss, "start": start_rss,
                                           "peak": max(watcher.samples or [start_rss]), "end": end_rss})


def summarise(args: argparse.Namespace, results: list, swaps: list, wall: float, rss: dict[str, int]) -> None:
    lost = [(kind, status) for kind, status, ok, _ in results if not ok]
    latencies = sorted(s for kind, status, _, s in results if kind == "valid" and status == 200)
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, _, _ in results:
        by_kind.setdefault(kind, {}).setdefault(str(status), 0)
        by_kind[kind][str(status)] += 1
    out = {
        "date": dt.date.today().isoformat(), "args": vars(args), "machine": machine_info(),
        "requests": len(results), "lost": len(lost), "lost_examples": lost[:20], "wall_s": wall,
        "by_kind": by_kind, "swaps": swaps,
        "rss_mb": {name: value / 2**20 for name, value in rss.items()},
        "valid_ms": {"p50": 1000 * statistics.median(latencies), "p99": 1000 * latencies[int(0.99 * len(latencies))]}
        if latencies else {},
    }
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"soak-{out['date']}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("requests", "lost", "wall_s", "rss_mb", "valid_ms", "by_kind", "swaps")},
                     indent=2))


if __name__ == "__main__":
    main()
