"""Where a model's CPU instances compute: each thread on a core of its own, below the event loop.

With one single-threaded CPU instance per core, the OS scheduler still moves the instance threads
around, sometimes both onto one core while the other idles, and the event loop, which reads the
next requests and writes the last answers, waits behind whichever compute thread holds its core.
Pinning instance i to core i and raising its nice value (the loop stays at the process's own)
lets the loop preempt compute at once and keeps every core busy: measured in docs/BENCHMARKS.md
(sixteenth wave). Anything else (an accelerator, pools of threads per instance, several worker
processes sharing the cores, fewer or more instances than cores) is left to the OS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from hotswap.backends.base import Backend, cpu_sharers
from hotswap.models.pipeline import Pipeline

log = logging.getLogger("hotswap.placement")

#: Nice value of a placed instance thread: the event loop's turn comes first on a shared core, yet
#: compute keeps about a tenth of the core's weight against anything else at nice 0.
PLACED_NICE = 10

Placement = Literal["auto", "off"]


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask), in order."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def plan_cores(placement: Placement, backends: Sequence[Backend]) -> tuple[list[int], str]:
    """One core per instance to pin to, or no cores and why placement stays with the OS."""
    if placement == "off":
        return [], "cpu_placement is off"
    if not sys.platform.startswith("linux"):
        return [], f"per-thread placement is Linux only (this is {sys.platform})"
    if cpu_sharers(1) > 1:
        return [], "several worker processes share the cores"
    devices = {b.describe().get("device") or "an unreported device" for b in backends}
    if devices != {"cpu"}:
        return [], f"the instances run on {', '.join(sorted(devices))}, not only the CPU"
    threads = {b.compute_threads() for b in backends}
    if threads != {1}:
        counts = ", ".join(sorted("the runtime's choice of" if t is None else str(t) for t in threads))
        return [], f"an instance computes on {counts} threads, not 1"
    cores = usable_cores()
    if len(cores) != len(backends):
        return [], f"{len(backends)} instances for {len(cores)} cores"
    return cores, ""


def pin_this_thread(core: int) -> None:
    """Pin the calling thread to `core` (per thread on Linux)."""
    os.sched_setaffinity(0, {core})


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value to `nice` (Linux: per thread); elsewhere, nothing.

    Raising it needs no privilege; a sandbox that refuses anyway leaves the thread at its priority."""
    if nice and hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:
            log.warning("cannot lower the CPU priority of thread %s: %s", threading.current_thread().name, exc)


async def place_instances(model: str, placement: Placement, pipelines: Sequence[Pipeline],
                          executors: Sequence[ThreadPoolExecutor]) -> list[int]:
    """Pin each instance's thread to its own core, below the loop, where `plan_cores` allows.

    Returns the cores, instance by instance; empty when left to the OS. A placed instance's
    processor is told it owns one core (`Processor.own_core`: no thread pool of its own). Every
    thread is pinned before any is niced: niced threads the kernel may stack on one core measured
    worse than leaving them alone, so a refusal to pin (a sandbox without the permission) puts
    every thread back on every core at its old priority, logged; serving works the same."""
    cores, why = plan_cores(placement, [p.backend for p in pipelines])
    if not cores:
        log.debug("model %s: instance threads left to the OS: %s", model, why)
        return []
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(loop.run_in_executor(ex, pin_this_thread, core) for ex, core in zip(executors, cores)))
    except OSError as exc:
        log.warning("model %s: cannot pin its instance threads (%s); left to the OS", model, exc)
        await asyncio.gather(*(loop.run_in_executor(ex, os.sched_setaffinity, 0, cores) for ex in executors),
                             return_exceptions=True)
        return []
    await asyncio.gather(*(loop.run_in_executor(ex, lower_priority, PLACED_NICE) for ex in executors))
    for pipeline in pipelines:
        pipeline.processor.own_core = True
    log.info("model %s: instance threads pinned to cores %s at nice %d", model, cores, PLACED_NICE)
    return cores
