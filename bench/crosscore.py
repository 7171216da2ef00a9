"""How far apart the first two usable CPUs are right now: the one-way latency of a cache line.

On this project's KVM machine (AMD EPYC) the host moves the two vCPUs between one core complex
(about 30 ns) and two (about 175 ns) every few minutes. A session whose two threads meet at a
barrier on every operator (onnxruntime with two intra-op threads) computes 25-30 % slower in the
far phase, while one single-threaded loop per core does not notice, so samples are tagged with the
phase they ran in. Needs a C compiler (`cc`); without one, or with fewer than two CPUs, None.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness import BENCH, log

SOURCE = BENCH / "crosscore.c"
BINARY = BENCH / ".build" / "crosscore"
#: Below this the two CPUs share a cache (about 30 ns measured); above it they do not (about 175).
NEAR_NS = 100.0


def _binary() -> Path | None:
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log("no C compiler: cross-core latency not measured")
        return None
    BINARY.parent.mkdir(exist_ok=True)
    subprocess.run([cc, "-O2", "-pthread", "-o", str(BINARY), str(SOURCE)], check=True)
    return BINARY


def cross_core_ns(tries: int = 3) -> float | None:
    """Median over `tries` of the one-way cache-line latency between the first two usable CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    binary = _binary() if len(cpus) >= 2 else None
    if binary is None:
        return None
    runs = [float(subprocess.run([str(binary), str(cpus[0]), str(cpus[1])], capture_output=True, text=True,
                                 check=True, timeout=30).stdout) for _ in range(tries)]
    return statistics.median(runs)


def phase(before: float | None, after: float | None) -> str | None:
    """"near" or "far" when the latency before and after a sample agree, "changed" when not."""
    if before is None or after is None:
        return None
    near = (before < NEAR_NS, after < NEAR_NS)
    return "changed" if near[0] != near[1] else ("near" if near[0] else "far")


def tagged(measure_point: Callable[[], dict]) -> dict:
    """The point's result with the cross-core latency before and after it and the phase it ran in."""
    before = cross_core_ns()
    res = measure_point()
    after = cross_core_ns()
    res.update(cross_core_ns=[before, after], phase=phase(before, after))
    return res


def print_phases(rows: list[dict]) -> None:
    """A markdown table of each row's per-round rate with the phase it ran in, for rows that have phases."""
    phased = [r for r in rows if any(r["per_round_phase"])]
    if phased:
        print("\n| row | c | per round (phase: the two CPUs near, far, changed; bench/crosscore.py) |\n|---|---|---|")
    for r in phased:
        rounds = ", ".join(f"{v:,.0f} ({p or '?'})" for v, p in zip(r["per_round_rps"], r["per_round_phase"]))
        print(f"| {r['name']} | {r['concurrency']} | {rounds} |")


if __name__ == "__main__":
    ns = cross_core_ns()
    print("no measurement (no C compiler or one CPU)" if ns is None else
          f"{ns:.0f} ns one-way between CPUs {sorted(os.sched_getaffinity(0))[:2]}: "
          f"{'near (a shared cache)' if ns < NEAR_NS else 'far (no shared cache)'}")
