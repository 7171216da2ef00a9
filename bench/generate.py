"""LLM generation: hotswap's continuous batching against transformers' `generate`, one request at a time.

    .venv/bin/python bench/generate.py [--tokens 64] [--requests 32] [--concurrency 1 4 16] [--device cpu]

The baseline is the raw sequential one: transformers' greedy `generate` in this process serving the
same chat requests one after another. Then `hotswap serve` runs SmolLM2-135M-Instruct (builtin:smollm2)
in a subprocess, and closed-loop clients (each sends its next request when its previous one ends)
stream /v1/chat/completions at each concurrency. Both sides decode greedily, so every request
generates the same tokens on both (up to its end-of-turn token or --tokens): tokens/s compare like
for like, and answers of different lengths keep the clients' arrivals as uneven as real traffic. Reported: generated
tokens/s, time to first token p50/p99 (request sent -> first content event), inter-token latency
p50/p99 (gaps between a stream's content events). Results go to bench/results/generate-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, Server, free_port, log, machine_info  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Explain photosynthesis to a child.", "Write a haiku about rain.",
             "Give three tips for learning a language.", "Why is the sky blue?", "Describe a cat in two sentences.",
             "What is machine learning?", "Name five fruits and their colours.", "How do airplanes fly?",
             "Tell me a fun fact about octopuses.", "What makes a good breakfast?", "Summarise the water cycle.",
             "How does a bicycle work?", "Suggest a name for a bakery.", "What is the speed of light?",
             "Write a two-line poem about the moon."]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def baseline(folder: Path, requests: int, tokens: int, device: str, threads: int | None) -> dict:
    """transformers' greedy generate, one request after another."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    prompts = []
    for i in range(requests):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                            add_generation_prompt=True)
        prompts.append(torch.tensor([list(ids["input_ids"] if not isinstance(ids, list) else ids)], device=device))
    with torch.inference_mode():
        model.generate(prompts[0], attention_mask=torch.ones_like(prompts[0]), max_new_tokens=4, do_sample=False)
        started, generated = time.perf_counter(), 0
        for ids in prompts:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False)
            generated += out.shape[1] - ids.shape[1]
    seconds = time.perf_counter() - started
    return {"requests": requests, "generated_tokens": generated, "seconds": seconds,
            "tokens_per_s": generated / seconds}


async def one_request(client: httpx.AsyncClient, url: str, question: str, tokens: int) -> dict:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    stamps, usage = [], 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ttft": stamps[0] - sent if stamps else float("nan"), "gaps": gaps, "tokens": usage}


async def served(base: str, concurrency: int, requests: int, tokens: int) -> dict:
    url = f"{base}/v1/chat/completions"
    queue = list(range(requests))
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            results.append(await one_request(client, url, QUESTIONS[i % len(QUESTIONS)], tokens))

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        await one_request(client, url, QUESTIONS[0], 4)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    generated = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results]
    gaps = [g for r in results for g in r["gaps"]]
    return {"concurrency": concurrency, "requests": requests, "generated_tokens": generated, "seconds": seconds,
            "tokens_per_s": generated / seconds, "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p99_s": percentile(ttfts, 99), "itl_p50_s": percentile(gaps, 50), "itl_p99_s": percentile(gaps, 99)}


def serve(device: str, threads: int | None, max_sequences: int, workdir: Path,
          prefill: int = 256, join_wait_ms: float | None = None) -> tuple[Server, str]:
    port = free_port()
    config = workdir / "generate.yaml"
    entry = {"name": "torch", "device": device, **({"threads": threads} if threads else {})}
    config.write_text(json.dumps({"server": {"port": port, "log_level": "warning"}, "models": [{
        "name": "smollm2", "source": "builtin:smollm2", "backends": [entry],
        "generation": {"max_sequences": max_sequences, "max_waiting": 1024, "prefill_chunk_tokens": prefill,
                       **({} if join_wait_ms is None else {"join_wait_ms": join_wait_ms})}}]}))
    server = Server("hotswap", [sys.executable, "-m", "hotswap.cli", "serve", "--config", str(config)],
                    f"http://127.0.0.1:{port}/v2/health/ready", workdir / "server.log", cwd=REPO)
    server.wait_ready(600)
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--requests", type=int, default=32, help="requests for the baseline, and per run at least "
                        "(4 per client at least, so that the steady state outweighs the first burst)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads, for both sides (a shared, "
                        "busy machine does better with 1: spinning OpenMP threads fight for cores)")
    parser.add_argument("--join-wait-ms", type=float, default=None, help="generation.join_wait_ms for the server "
                        "(default: the server's own); 0 turns the wait for joiners off")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "generate-2026-11-29.json")
    args = parser.parse_args()
    from hotswap.models.smollm2 import generation_folder
    from hotswap.models.sources import hotswap_home

    folder = generation_folder(hotswap_home())
    log(f"baseline: transformers generate, {args.requests} requests one by one, {args.tokens} tokens each")
    base = baseline(folder, args.requests, args.tokens, args.device, args.threads)
    log(f"baseline {base['tokens_per_s']:.1f} tokens/s")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        server, url = serve(args.device, args.threads, max(args.concurrency), Path(tmp),
                            join_wait_ms=args.join_wait_ms)
        try:
            for concurrency in args.concurrency:
                run = asyncio.run(served(url, concurrency, max(args.requests, 4 * concurrency), args.tokens))
                run["vs_baseline"] = run["tokens_per_s"] / base["tokens_per_s"]
                log(json.dumps(run))
                runs.append(run)
        finally:
            server.stop()
    report = {"machine": machine_info(), "device": args.device, "threads": args.threads,
              "join_wait_ms": args.join_wait_ms,
              "tokens_per_request": args.tokens, "baseline": base, "served": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("| concurrency | tokens/s | x baseline | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| baseline (generate, sequential) | {base['tokens_per_s']:.1f} | 1.0 | | | | |")
    for r in runs:
        print(f"| {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['vs_baseline']:.2f} "
              f"| {r['ttft_p50_s'] * 1e3:.0f} ms | {r['ttft_p99_s'] * 1e3:.0f} ms "
              f"| {r['itl_p50_s'] * 1e3:.0f} ms | {r['itl_p99_s'] * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
