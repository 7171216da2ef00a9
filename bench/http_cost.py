"""hotswap's CPU per inference request with its HTTP protocol, in-process: no sockets, no load generator.

    .venv/bin/python bench/http_cost.py                        # this tree
    .venv/bin/python bench/http_cost.py --base bd30b51         # and an earlier commit, alternated

`--concurrency` connections of hotswap's own HTTP protocol (uvicorn's httptools protocol as
`hotswap serve` configures it) are fed the tiny model's v2 JSON request as raw bytes through
`data_received`, each sending its next request when its answer is written, as hey's connections
do; the transport is a stand-in whose write() only looks for the end of the answer. So the
measure is the protocol's parsing and answering plus the whole app (guard, decode, batching,
onnxruntime, encode, metrics), without the kernel's socket work or a client on the same cores,
which make a load generator's numbers noisy on two cores. CPU time per request is reported as the
minimum and median over `--windows` windows (noise only ever adds). With `--base`, that commit is
checked out into a temporary git worktree and measured in its own process, alternating with this
tree's, so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}).encode()
REQUEST = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: hey/0.0.1\r\n"
           b"Content-Length: %d\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n" % len(BODY)) + BODY


class Transport:
    """What the protocol writes to: an answer's end sends the connection's next request."""

    def __init__(self, connection: Connection) -> None:
        self.connection, self.closing = connection, False

    def write(self, data: bytes) -> None:
        self.connection.answered(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Connection:
    """One keep-alive client: sends a request, and the next one when the answer is written."""

    def __init__(self, protocol_class, config, state, left: list[int]) -> None:
        self.left = left
        self.protocol = protocol_class(config=config, server_state=state, app_state={})
        self.protocol.connection_made(Transport(self))
        self.done = asyncio.get_running_loop().create_future()

    def send(self) -> None:
        self.protocol.data_received(REQUEST)

    def answered(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        self.left[0] -= 1
        if self.left[0] > 0:
            asyncio.get_running_loop().call_soon(self.send)
        elif not self.done.done():
            self.done.set_result(None)


async def windows(folder: Path, concurrency: int, requests: int, count: int) -> list[float]:
    """CPU µs per request in each of `count` windows (after one warm-up window)."""
    from uvicorn.server import ServerState

    from hotswap.config import parse_config
    from hotswap.serve.app import create_app
    from hotswap.serve.server import uvicorn_config
    from hotswap.testing import build_tiny_models

    tiny = build_tiny_models(folder)
    config = parse_config({"server": {"model_roots": [str(folder)]}, "models": [
        {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}],
         "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2, "max_queue_size": 4096}}]}, "bench/http_cost.py")
    app = create_app(config)
    server_config = uvicorn_config(app, config.server)
    server_config.load()
    state = ServerState()
    results = []
    async with app.router.lifespan_context(app):
        for window in range(count + 1):
            left = [requests]
            connections = [Connection(server_config.http_protocol_class, server_config, state, left)
                           for _ in range(concurrency)]
            started = time.process_time()
            for connection in connections:
                connection.send()
            await asyncio.wait([c.done for c in connections], return_when=asyncio.FIRST_COMPLETED)
            while any(not c.protocol.cycle.response_complete for c in connections):
                await asyncio.sleep(0.001)
            cpu = time.process_time() - started
            for connection in connections:
                connection.protocol.connection_lost(None)
            if window:
                results.append(1e6 * cpu / requests)
    return results


def measure_here(args: argparse.Namespace) -> None:
    """Child mode: measure the tree this script is imported from; print the windows as JSON."""
    import uvloop

    sys.path.insert(0, str(Path(args.tree)))
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(uvloop.run(windows(Path(folder), args.concurrency, args.requests, args.windows))))


def run_tree(tree: Path, args: argparse.Namespace) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(tree), "--concurrency", str(args.concurrency),
                          "--requests", str(args.requests), "--windows", str(args.windows)],
                         capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="an earlier commit to measure alternately with this tree")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=5000, help="requests per window")
    p.add_argument("--windows", type=int, default=10, help="windows per process")
    p.add_argument("--rounds", type=int, default=3, help="processes per tree, alternated")
    p.add_argument("--child", dest="tree", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tree:
        measure_here(args)
        return
    trees = {"this tree": REPO}
    with tempfile.TemporaryDirectory() as scratch:
        if args.base:
            base = Path(scratch) / "base"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), args.base],
                           check=True)
            trees = {args.base: base, **trees}
        try:
            found: dict[str, list[float]] = {label: [] for label in trees}
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    found[label] += run_tree(tree, args)
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    print(f"c={args.concurrency}, {args.requests} requests per window, {args.rounds} × {args.windows} windows\n")
    print("| tree | CPU µs/request, min | median |\n|---|---|---|")
    for label, values in found.items():
        print(f"| {label} | {min(values):.1f} | {statistics.median(values):.1f} |")
    if args.base:
        print(f"\nthis tree ÷ {args.base}, min: {min(found['this tree']) / min(found[args.base]):.3f}")


if __name__ == "__main__":
    main()
