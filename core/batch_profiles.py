"""Batch buckets: which batch sizes an engine is tuned for, shared by the exporter and the runtime.

A single TensorRT optimisation profile ``1..max_batch`` with ``opt = 1`` makes every batched call
run batch-1 tactics. Instead each engine gets one profile per bucket (1, 2-4, 5-8, 9-16, ...),
tuned at the bucket's top; the runtime picks the smallest bucket that holds a call, pads nothing,
and warms up once per bucket top (the bundle's *batch list*).
"""

from __future__ import annotations

from typing import Optional


def batch_list(max_batch: int) -> list[int]:
    """Bucket tops up to ``max_batch``: 1, 4, 8, 16, ... and ``max_batch`` itself (e.g. 6 -> [1, 4, 6])."""
    max_batch = int(max_batch)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    tops, b = [1], 4
    while b < max_batch:
        tops.append(b)
        b *= 2
    if tops[-1] != max_batch:
        tops.append(max_batch)
    return tops


def batch_profiles(max_batch: int, opt_batch: Optional[int] = None) -> list[tuple[int, int, int]]:
    """(min, opt, max) per bucket. ``opt`` is the bucket's top, or ``opt_batch`` in the bucket holding it."""
    tops = batch_list(max_batch)
    if opt_batch is not None and not 1 <= int(opt_batch) <= int(max_batch):
        raise ValueError(f"opt_batch must be in [1, {max_batch}], got {opt_batch}")
    out, lo = [], 1
    for hi in tops:
        opt = int(opt_batch) if opt_batch is not None and lo <= int(opt_batch) <= hi else hi
        out.append((lo, opt, hi))
        lo = hi + 1
    return out


def profile_for(profiles: list[tuple[int, int, int]], batch: int) -> int:
    """Index of the smallest profile whose range holds ``batch``; ValueError past the largest max."""
    for i, (lo, _, hi) in enumerate(profiles):
        if lo <= batch <= hi:
            return i
    raise ValueError(f"batch {batch} is outside every optimisation profile {profiles}")
