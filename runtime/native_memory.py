"""Keeps the server's native heap from creeping over a long run.

glibc gives every thread that allocates its own malloc arena (up to 8 per core) and raises its
mmap threshold each time a large block is freed, so the per-plan image and batch buffers
(megabytes, allocated on whichever plan thread runs) end up recycled inside many arenas instead
of returned to the kernel: RSS grows for the first many minutes of a soak and never comes back.
A couple of arenas and a fixed mmap threshold keep large buffers in mmap (freed = gone) and
the heap small. An operator's own MALLOC_* environment settings win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
M_ARENA_MAX = -8


def bound_native_heap(max_arenas: int = 2, mmap_threshold: int = 256 * 1024) -> str:
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
    ok = mallopt(M_ARENA_MAX, int(max_arenas)) == 1 and mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return (f"malloc: {max_arenas} arenas, mmap above {mmap_threshold // 1024} KiB" if ok
            else "malloc: mallopt refused the caps, left alone")
