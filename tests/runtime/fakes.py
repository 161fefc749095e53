"""Fake engines with hand-checkable outputs, for execution, batching and server logic tests."""

from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np

from xvla.runtime.engines.base import Engine, EngineInfo, TensorSpec


class RecordingEngine(Engine):
    """out = sum of every input's per-row mean, broadcast to [B, 2]; records batch sizes of its calls."""

    def __init__(self, names=("a", "b"), delay_s: float = 0.0) -> None:
        self.inputs = [TensorSpec(n, "float32", ("batch", "dyn")) for n in names]
        self.outputs = [TensorSpec("out", "float32", ("batch", 2))]
        self.info = EngineInfo(graph="fake", backend="fake", provider="python", max_batch=8)
        self.calls: list[int] = []
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            b = next(iter(inputs.values())).shape[0]
            self.calls.append(b)
            if self.delay_s:
                time.sleep(self.delay_s)
            s = sum(np.asarray(v, np.float64).reshape(b, -1).mean(axis=1) for v in inputs.values())
            return {"out": np.repeat(s[:, None], 2, axis=1).astype(np.float32)}
        finally:
            with self._lock:
                self.concurrent -= 1
