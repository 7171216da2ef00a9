"""Does the raw MiniLM loop's speed follow whether the two CPUs share a cache? (bench/crosscore.py)

    .venv/bin/python bench/phases.py --rounds 12 --seconds 5
    .venv/bin/python bench/phases.py --lone --rounds 3 --seconds 3   # a lone text's latency instead

Alternates, in one process, the raw pipeline on one session with onnxruntime's default two
intra-op threads (batches of 32) and two single-threaded sessions in two loops (batches of 16),
on copies of the ~8-token text of bench/overhead.py, and tags each point with the cross-core
latency before and after it. With --lone, batches of one text of each length instead (the
latency a lone request pays on a two-thread session against a one-thread one). Writes
bench/results/phases[-lone]-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import raw as rawbench  # noqa: E402
from crosscore import tagged  # noqa: E402
from harness import BENCH, REPO, log, machine_info  # noqa: E402
from overhead_setup import TEXTS  # noqa: E402


def lone(variants: dict, args: argparse.Namespace, points: list[dict]) -> None:
    """p50 of one text per batch, each length, on the first session of each variant."""
    print("\n| tokens | round | phase | " + " | ".join(f"{n.split(', batch')[0].split(', 2 loops')[0]}: p50 ms"
                                                   for n in variants) + " |")
    print("|---|---|---|" + "---|" * len(variants))
    for rnd in range(args.rounds):
        for tokens, text in TEXTS.items():
            res = {name: tagged(partial(rawbench.measure, models if not isinstance(models, list) else models[0],
                                        1, args.seconds, 0.5, text)) for name, (models, _) in variants.items()}
            points.extend({"round": rnd, "variant": name, "tokens": tokens, **r} for name, r in res.items())
            print(f"| {tokens} | {rnd} | {' / '.join(str(r['phase']) for r in res.values())} | "
                  + " | ".join(f"{r['p50_ms']:.2f}" for r in res.values()) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--tokens", type=int, choices=sorted(TEXTS), default=8)
    p.add_argument("--lone", action="store_true", help="batch 1, every text length, p50 latency")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from hotswap.models.minilm import prepare
    from hotswap.models.sources import hotswap_home

    model_dir = prepare(hotswap_home()).base_dir
    variants = {"one session, 2 threads, batch 32": (rawbench.load(model_dir), 32),
                "two sessions, 1 thread each, 2 loops × 16": ([rawbench.load(model_dir, 2) for _ in range(2)], 16)}
    date, points = dt.datetime.now().astimezone(), []
    if args.lone:
        lone(variants, args, points)
    for rnd in range(0 if args.lone else args.rounds):
        for name, (models, batch) in variants.items():
            res = tagged(partial(rawbench.measure, models, batch, args.seconds, 1.0, TEXTS[args.tokens]))
            points.append({"round": rnd, "variant": name, **res})
            log(f"{rnd} {name}: {res['throughput']:.0f} texts/s, cross-core {res['cross_core_ns']} ns, {res['phase']}")
    if not args.lone:
        print("\n| variant | phase | rounds | texts/s (median; range) |\n|---|---|---|---|")
    for name in variants if not args.lone else ():
        for ph in ("near", "far", "changed"):
            rates = [x["throughput"] for x in points if x["variant"] == name and x["phase"] == ph]
            if rates:
                print(f"| {name} | {ph} | {len(rates)} | {statistics.median(rates):,.0f}; "
                      f"{min(rates):,.0f}–{max(rates):,.0f} |")
    path = args.out or BENCH / "results" / f"phases{'-lone' if args.lone else ''}-{date.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps({"date": date.strftime("%Y-%m-%d %H:%M %Z"), "command": " ".join(sys.argv),
                                "machine": machine_info(), "tokens": args.tokens, "points": points}, indent=2))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
