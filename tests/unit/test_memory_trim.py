"""The idle heap trimmer (hotswap/serve/memory.py) against the real C library's malloc_trim."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hotswap.serve.memory import IDLE_CPU_SHARE, MemoryTrimmer, glibc_trim, resident_bytes
from hotswap.server_config import MemoryTrimConfig

pytestmark = pytest.mark.skipif(glibc_trim() is None, reason="this C library has no malloc_trim")

MIB = 2**20


def heap_garbage(mib: int) -> bytearray:
    """Allocate `mib` MiB in 64 KiB blocks below one block that stays live, then free the others:
    glibc cannot give that memory back from the top of the heap, only a trim can."""
    blocks = [bytearray(64 * 1024) for _ in range(mib * 16)]
    for block in blocks:
        block[::4096] = b"x" * 16  # touch every page, so it is resident
    keep = bytearray(64 * 1024)
    del blocks
    return keep


def test_a_trim_gives_freed_heap_back_and_reports_it() -> None:
    reported: list[int] = []
    trimmer = MemoryTrimmer(MemoryTrimConfig(), on_trim=reported.append)
    keep = heap_garbage(200)
    before = resident_bytes()
    released = trimmer.trim_now()
    assert released > 100 * MIB, f"only {released / MIB:.0f} MiB given back"
    assert before - resident_bytes() > 100 * MIB
    assert reported == [released] and trimmer.trims == 1
    assert released < before, "what a trim gives back is part of what was resident before it"
    again = trimmer.trim_now()  # nothing left to give back: about nothing, either way
    assert abs(again) < 50 * MIB and reported == [released, again] and trimmer.trims == 2
    del keep


@pytest.mark.parametrize(("cpu_share", "growth_mib", "due"), [
    (0.0, 32, True),                        # idle, grown exactly the minimum
    (0.0, 31, False),                       # idle, not grown enough
    (IDLE_CPU_SHARE * 0.99, 64, True),      # just under the idle share
    (IDLE_CPU_SHARE, 64, False),            # busy: never in the middle of traffic
])
def test_due_only_when_idle_and_grown(cpu_share: float, growth_mib: int, due: bool) -> None:
    config = MemoryTrimConfig(idle_s=2.0, min_growth_mib=32)
    trimmer = MemoryTrimmer(config, trim=lambda: None)
    baseline = trimmer._baseline
    assert trimmer.due(cpu_share * config.idle_s, baseline + growth_mib * MIB) is due


def watch(trimmer: MemoryTrimmer, seconds: float, busy: threading.Event | None = None) -> None:
    async def main() -> None:
        task = asyncio.create_task(trimmer.run())
        await asyncio.sleep(seconds)
        task.cancel()
    if busy is None:
        asyncio.run(main())
        return
    def spin() -> None:
        while not busy.is_set():
            sum(range(1000))
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        asyncio.run(main())
    finally:
        busy.set()
        thread.join()


def test_the_watcher_trims_once_the_process_is_idle() -> None:
    trimmer = MemoryTrimmer(MemoryTrimConfig(idle_s=0.1, min_growth_mib=64))
    keep = heap_garbage(200)
    watch(trimmer, 0.6)
    assert trimmer.trims == 1  # and not again: nothing grew after it
    del keep


def test_the_watcher_leaves_a_busy_process_alone() -> None:
    trimmer = MemoryTrimmer(MemoryTrimConfig(idle_s=0.1, min_growth_mib=64))
    keep = heap_garbage(200)
    watch(trimmer, 0.6, busy=threading.Event())
    assert trimmer.trims == 0
    del keep


def test_switched_off_it_never_trims() -> None:
    trimmer = MemoryTrimmer(MemoryTrimConfig(enabled=False, idle_s=0.05, min_growth_mib=0))
    assert not trimmer.available
    started = time.monotonic()
    watch(trimmer, 0.3)
    assert trimmer.trims == 0 and time.monotonic() - started < 5


def test_trims_are_counted_and_what_they_gave_back_summed_never_negative() -> None:
    from hotswap.serve.metrics import Metrics

    metrics = Metrics()
    metrics.trimmed(3 * MIB)
    metrics.trimmed(-5)  # resident memory grew meanwhile: a trim, nothing given back
    metrics.trimmed(MIB)
    sample = {s.name: s.value for family in metrics.registry.collect() for s in family.samples}
    assert sample["hotswap_memory_trims_total"] == 3
    assert sample["hotswap_memory_trimmed_bytes_total"] == 4 * MIB
