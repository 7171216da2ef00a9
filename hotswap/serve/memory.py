"""Give freed heap memory back to the operating system once the server goes idle.

A burst of large batches (or a swap, which loads one runtime before the other is freed) leaves
glibc holding the freed pages: its arenas return memory to the OS only from the top of each heap,
so one live block above a freed region keeps the whole region resident. Measured with the soak
(bench/soak.py): 1,088 MiB resident after a burst, 516 MiB after one `malloc_trim(0)`.
Trimming walks every arena under its lock, so it is done only when the process is idle (little
CPU used over the last interval) and the resident size has grown since the last trim: never in
the middle of traffic.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Callable

from hotswap.server_config import GcConfig, MemoryTrimConfig

log = logging.getLogger("hotswap.memory")

#: An interval counts as idle when the process used less CPU than this share of one core in it.
IDLE_CPU_SHARE = 0.1


def glibc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def resident_bytes() -> int:
    """This process's resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class MemoryTrimmer:
    """Watches the process once per `config.idle_s` and trims the heap when it has gone idle
    with at least `config.min_growth_mib` more resident than after the last trim."""

    def __init__(self, config: MemoryTrimConfig, trim: Callable[[], object] | None = None,
                 on_trim: Callable[[int], None] | None = None) -> None:
        self.config = config
        self._trim = trim if trim is not None else glibc_trim()
        self._on_trim = on_trim
        self._baseline = resident_bytes()
        self.trims = 0

    @property
    def available(self) -> bool:
        return self.config.enabled and self._trim is not None and self._baseline > 0

    def due(self, cpu_used_s: float, resident: int) -> bool:
        """Idle over the last interval and grown enough since the last trim."""
        idle = cpu_used_s < IDLE_CPU_SHARE * self.config.idle_s
        return idle and resident - self._baseline >= self.config.min_growth_mib * 2**20

    def trim_now(self) -> int:
        """Trim, and return the resident bytes it gave back (negative if RSS rose meanwhile)."""
        assert self._trim is not None
        before = resident_bytes()
        self._trim()
        self._baseline = resident_bytes()
        self.trims += 1
        released = before - self._baseline
        if self._on_trim is not None:
            self._on_trim(released)
        log.debug("heap trimmed: %.0f MiB given back, %.0f MiB resident", released / 2**20, self._baseline / 2**20)
        return released

    async def run(self) -> None:
        """Watch until cancelled (the app's lifespan owns this task)."""
        if not self.available:
            return
        cpu = time.process_time()
        while True:
            await asyncio.sleep(self.config.idle_s)
            now = time.process_time()
            cpu_used, cpu = now - cpu, now
            if self.due(cpu_used, resident_bytes()):
                # In a thread: the trim takes the arena locks, not the event loop.
                await asyncio.to_thread(self.trim_now)
                cpu = time.process_time()  # the trim's own CPU is not traffic


def settle_gc(config: GcConfig) -> Callable[[], None]:
    """Set the collector for serving (server.gc), once the models have loaded: a young-generation
    threshold above what the requests in flight allocate, and the loaded objects frozen out of
    the full collections. Returns what puts the collector back as it was (at shutdown: what was
    frozen becomes collectable again, in a process that goes on, as a test's)."""
    previous = gc.get_threshold()
    gc.set_threshold(config.young_threshold, *previous[1:])
    if config.freeze_after_load:
        gc.collect()  # what start-up left as garbage is freed, not frozen
        gc.freeze()

    def restore() -> None:
        gc.set_threshold(*previous)
        if config.freeze_after_load:
            gc.unfreeze()

    return restore
