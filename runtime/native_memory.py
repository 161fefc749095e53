"""Keeps the server's native heap from creeping over a long run.

glibc gives every thread that allocates its own malloc arena (up to 8 per core) and raises its
mmap threshold each time a large block is freed, so the per-plan image and batch buffers
(megabytes, allocated on whichever plan thread runs) end up recycled inside many arenas instead
of returned to the kernel: RSS grows for the first many minutes of a soak and never comes back.
Two arenas bound that, and a fixed mmap threshold above one observation message (a few MB,
reused from the heap at 30 Hz without page faults) keeps the larger batch buffers in mmap
(freed = gone). An operator's own MALLOC_* environment settings win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def bound_native_heap(max_arenas: int = 2, mmap_threshold: int = 4 * 1024 * 1024,
                      trim_threshold: int = 64 * 1024 * 1024) -> str:
    """Applies the caps through mallopt (glibc only); returns what was done, for the log."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return "malloc: left to the environment's MALLOC_* settings"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        gnu = getattr(libc, "gnu_get_libc_version", None)
    except OSError:
        mallopt = gnu = None
    if mallopt is None or gnu is None:  # musl, macOS: other allocators, other behaviour
        return "malloc: not glibc, left alone"
    # a fixed mmap threshold also fixes the trim threshold (128 KiB): the heap top would be handed
    # back and faulted in again for every message; keep a few messages' worth
    ok = all(mallopt(k, int(v)) == 1 for k, v in ((M_ARENA_MAX, max_arenas), (M_MMAP_THRESHOLD, mmap_threshold),
                                                   (M_TRIM_THRESHOLD, trim_threshold)))
    return (f"malloc: {max_arenas} arenas, mmap above {mmap_threshold / 2**20:g} MiB" if ok
            else "malloc: mallopt refused the caps, left alone")
