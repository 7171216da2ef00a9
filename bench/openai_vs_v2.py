"""MiniLM throughput through /v1/embeddings divided by throughput through v2 JSON, same server.

    .venv/bin/python bench/openai_vs_v2.py                      # 3 alternating rounds of 10 s each, c=32
    .venv/bin/python bench/openai_vs_v2.py --seconds 20 --rounds 5

One `hotswap serve` (builtin:minilm, onnxruntime CPU, max_batch_size 32); `hey` alternates
between the two endpoints with one sentence per request, so drift in the machine's load
hits both alike. Prints each round and the median ratio (issue 11's goal: >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402
from harness import BENCH, log, post_json, run_hey  # noqa: E402

SENTENCE = "hotswap serves one endpoint over any accelerator, whatever the hardware underneath."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hey-cpus", default=None, help="taskset cores for hey, e.g. 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target = servers.hotswap(Path(tmp), BENCH / "logs", SENTENCE, 32, 2, None, label="openai-vs-v2")
        try:
            target.server.wait_ready()
            base = target.url.split("/v2/")[0]
            openai_body = {"model": "minilm", "input": SENTENCE, "encoding_format": "float"}
            bodies = {"v2": (target.url, target.body),
                      "openai": (f"{base}/v1/embeddings", json.dumps(openai_body).encode())}
            for name, (url, body) in bodies.items():  # warm-up, and both answer
                post_json(url, body)
                (Path(tmp) / f"{name}.json").write_bytes(body)
            ratios = []
            for i in range(args.rounds):
                # Only 200s count (hey's own req/s would count error answers too).
                rps = {name: run_hey(url, Path(tmp) / f"{name}.json", args.concurrency, args.seconds, args.hey_cpus,
                                     target.server.pid)["throughput"] for name, (url, _) in bodies.items()}
                ratios.append(rps["openai"] / rps["v2"])
                log(f"round {i + 1}: v2 {rps['v2']:.0f} req/s, openai {rps['openai']:.0f} req/s, "
                    f"ratio {ratios[-1]:.3f}")
            log(f"median /v1/embeddings / v2 at c={args.concurrency}: {statistics.median(ratios):.3f}")
        finally:
            target.server.stop()


if __name__ == "__main__":
    main()
