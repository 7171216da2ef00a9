"""Short accelerator benchmark of the default model through hotswap's own backends.

    python bench/device_bench.py --device cuda:0 [--out results.json]

For each configuration (torch fp32/fp16/bf16 on the device, onnxruntime CUDA when the
onnxruntime-gpu build is installed) it loads all-MiniLM-L6-v2 via the backend, checks parity
against onnxruntime CPU, and times batches of 1, 32 and 128 sentences at sequence length 32.
Timing includes host->device copies and the .cpu() copy back, which synchronises the device.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.models.minilm import prepare
from hotswap.models.processing import make_processor
from hotswap.models.sources import hotswap_home

SENTENCE = "hotswap serves one model on any accelerator and proves with numbers that the answers stay the same."


def configurations(device: str) -> list[tuple[str, type, object]]:
    configs = [(f"torch {device} {dtype}", TorchBackend, TorchBackend.Options(device=device, dtype=dtype))
               for dtype in ("float32", "float16", "bfloat16")]
    configs.append(("onnxruntime CUDAExecutionProvider", OnnxRuntimeBackend,
                     OnnxRuntimeBackend.Options(providers=["CUDAExecutionProvider"], strict=False)))
    return configs


def measure(backend, processor, batch: int, seconds: float) -> dict:
    texts = np.array([SENTENCE.encode()] * batch, dtype=object)
    prepared = processor.preprocess({"text": texts})
    for _ in range(3):
        backend.infer(prepared)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        backend.infer(prepared)
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    return {"batch": batch, "p50_ms": p50 * 1e3, "throughput": batch / p50, "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per batch size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    source = prepare(hotswap_home())
    sentences = np.array([b"A man is eating food.", SENTENCE.encode(), "Größe, café".encode()], dtype=object)

    cpu = OnnxRuntimeBackend()
    signature = cpu.load(source.artifact_for(cpu.formats), OnnxRuntimeBackend.Options())
    processor = make_processor(source.processor, source.base_dir, signature)
    reference_in = processor.preprocess({"text": sentences})
    reference = processor.postprocess(reference_in, cpu.infer(reference_in))["embedding"]

    results = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "configs": []}
    for label, cls, options in configurations(args.device):
        reason = cls.probe(options)
        entry = {"config": label, "skipped": reason}
        if reason is None:
            backend = cls()
            backend.load(source.artifact_for(cls.formats), options)
            got = processor.postprocess(reference_in, backend.infer(reference_in))["embedding"]
            entry.update(describe=backend.describe(), max_abs_error=float(np.abs(got - reference).max()),
                         timings=[measure(backend, processor, b, args.seconds) for b in (1, 32, 128)])
            backend.close()
        results["configs"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print("\n| config | device | max abs err vs ORT CPU | b1 p50 ms | b32 sent/s | b128 sent/s |")
    print("|---|---|---|---|---|---|")
    for entry in results["configs"]:
        if entry["skipped"]:
            print(f"| {entry['config']} | skipped: {entry['skipped'][:80]} | | | | |")
            continue
        t = {x["batch"]: x for x in entry["timings"]}
        print(f"| {entry['config']} | {entry['describe']['device']} | {entry['max_abs_error']:.1e} | "
              f"{t[1]['p50_ms']:.2f} | {t[32]['throughput']:.0f} | {t[128]['throughput']:.0f} |")


if __name__ == "__main__":
    main()
