"""Timing distributions and a timer that measures what a caller waits for.

Why a custom timer: on a GPU a call returns when its kernels are *queued*, so a timer that
stops on return measures the launch, not the work. Every sample here ends after an explicit
``sync()`` (``torch.cuda.synchronize`` or ONNX Runtime's io-binding output sync), and warm-up
calls (allocations, lazy kernel selection, TensorRT tactic caches) are never sampled.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class Distribution:
    """Summary of one set of samples (milliseconds unless the field says otherwise)."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> "Distribution":
        a = np.asarray(list(samples), dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        p50, p90, p99 = (float(np.percentile(a, q)) for q in PERCENTILES)
        return cls(int(a.size), float(a.mean()), float(a.std()), float(a.min()), p50, p90, p99, float(a.max()))

    def to_dict(self, digits: int = 4) -> dict[str, float]:
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class TimedRun:
    """Raw samples of one timed call plus their summary."""

    samples_ms: list[float]
    dist: Distribution

    def to_dict(self, keep_samples: bool = True) -> dict:
        out = {"dist": self.dist.to_dict()}
        if keep_samples:
            out["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return out


def time_call(fn: Callable[[], object], *, warmup: int, iters: int, sync: Optional[Callable[[], None]] = None,
              max_seconds: Optional[float] = None) -> TimedRun:
    """Runs ``fn`` ``warmup`` times unsampled, then ``iters`` sampled times (each ends after ``sync``).

    ``max_seconds`` caps the sampled phase (at least 3 samples are always taken) so that a
    slow model on a small machine cannot make a profile run for hours.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    sync = sync or (lambda: None)
    for _ in range(max(0, warmup)):
        fn()
        sync()
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if max_seconds is not None and i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return TimedRun(samples, Distribution.of(samples))
