"""Dynamic batching across sessions: concurrent calls on one engine become one batched call.

Every session plans its chunk in its own worker thread, calling the VLM once and the action
graph once per denoising step. A ``BatchingEngine`` wraps the shared engine: calls that
arrive within the batching window (and have the same per-sample shapes) are concatenated
along the batch axis, run once, and split back. Since all sessions step their denoising
loops through the same batcher, their steps line up and every step is batched, not only
the first one.

The window is bounded, and it closes early once every session that is currently planning
is waiting in this batcher (``Planners``), so a lone robot never waits for company. A lone
planner (the only one planning, nothing queued) runs its call inline on its own planning thread:
no hand-off to the batcher thread and back (two thread wake-ups per denoising step, milliseconds
each on a busy machine). Engine calls never run on the asyncio event loop, and never two at once
on one engine (one execution lock for the inline path and the batcher thread).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from xvla.runtime.engines.base import Engine, EngineError, StaticInputs

log = logging.getLogger(__name__)


class Planners:
    """Counts the threads currently planning a chunk (they are the only possible batch-mates)."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._n

    def __enter__(self) -> "Planners":
        with self._lock:
            self._n += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._n -= 1


@dataclass
class _Request:
    inputs: Mapping[str, np.ndarray]
    rows: int
    signature: tuple
    static: StaticInputs | None = None  # the caller's resident inputs (used when it runs alone)
    dynamic: Mapping[str, np.ndarray] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    wait_ms: float  # enqueue -> engine start (the window plus waiting for a busy engine)
    run_ms: float
    batch_size: int  # rows in the engine call this request rode in


def _signature(inputs: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in inputs.items()))


class BatchingEngine(Engine):
    """An Engine that batches concurrent ``run`` calls onto a wrapped engine (thread-safe)."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        window_ms: float = 2.0,
        planners: Planners | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.info = engine.info
        self.inputs = engine.inputs
        self.outputs = engine.outputs
        self.max_batch = max(1, int(max_batch))
        self.window_s = max(0.0, window_ms) / 1000.0
        self.planners = planners
        self.on_batch = on_batch  # (graph, batch_size, run_ms) -> None, e.g. metrics
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._exec = threading.Lock()  # one engine call at a time: the batcher thread or an inline caller
        self.inline_calls = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{engine.info.graph}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_with_stats(inputs)[0]

    def bind_static(self, inputs: Mapping[str, np.ndarray]) -> StaticInputs:
        """The wrapped engine's handle: used as is when the call rides alone, its host arrays when merged."""
        return self.engine.bind_static(inputs)

    def run_bound(self, static: StaticInputs, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_bound_with_stats(static, inputs)[0]

    def run_bound_with_stats(self, static: StaticInputs, inputs: Mapping[str, np.ndarray]
                             ) -> tuple[dict[str, np.ndarray], BatchStats]:
        return self.run_with_stats({**static.arrays, **inputs}, static=static, dynamic=inputs)

    def run_with_stats(self, inputs: Mapping[str, np.ndarray], static: StaticInputs | None = None,
                       dynamic: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], BatchStats]:
        self.check_inputs(inputs)
        arrays = {k: np.asarray(v) for k, v in inputs.items() if k in set(self.input_names)}
        rows = {v.shape[0] if v.ndim else -1 for v in arrays.values()}
        if len(rows) != 1 or -1 in rows:
            raise EngineError(f"{self.info.graph}: inputs must share a leading batch axis, got "
                              f"{ {k: v.shape for k, v in arrays.items()} }")
        req = _Request(arrays, rows.pop(), _signature(arrays), static, dynamic)
        if self._alone() and self._exec.acquire(blocking=False):
            try:
                if self._alone():  # still nobody to batch with: skip the batcher thread
                    self.inline_calls += 1
                    self._run_batch([req])
                    return req.future.result()
            finally:
                self._exec.release()
        with self._cond:
            if self._closed:
                raise EngineError(f"{self.info.graph}: batcher closed")
            self._pending.append(req)
            self._cond.notify_all()
        return req.future.result()

    def _alone(self) -> bool:
        return (self.planners is not None and self.planners.active <= 1 and not self._pending
                and not self._closed)

    # ------------------------------------------------------------------ batcher thread
    def _ready(self, first: _Request, now: float) -> bool:
        mates = [r for r in self._pending if r.signature == first.signature]
        rows = sum(r.rows for r in mates)
        if rows >= self.max_batch or now - first.enqueued >= self.window_s:
            return True
        expected = self.planners.active if self.planners is not None else 1
        return len(mates) >= max(1, expected)

    def _take(self) -> list[_Request]:
        first = self._pending[0]
        batch, rows = [], 0
        for r in list(self._pending):
            if r.signature != first.signature:
                continue
            if batch and rows + r.rows > self.max_batch:
                break
            batch.append(r)
            rows += r.rows
        for r in batch:
            self._pending.remove(r)
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                while True:
                    now = time.perf_counter()
                    first = self._pending[0]
                    if self._closed or self._ready(first, now):
                        break
                    self._cond.wait(timeout=max(1e-4, first.enqueued + self.window_s - now))
                batch = self._take()
            self._execute(batch)

    def _execute(self, batch: list[_Request]) -> None:
        with self._exec:
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            if len(batch) == 1 and batch[0].static is not None and batch[0].dynamic is not None:
                out = self.engine.run_bound(batch[0].static, batch[0].dynamic)  # resident inputs stay resident
            elif len(batch) == 1:
                out = self.engine.run(dict(batch[0].inputs))
            else:
                feeds = {k: np.concatenate([r.inputs[k] for r in batch], axis=0) for k in batch[0].inputs}
                out = self.engine.run(feeds)
        except BaseException as exc:  # every waiter must hear about it
            for r in batch:
                r.future.set_exception(exc)
            return
        run_ms = (time.perf_counter() - start) * 1000.0
        size = sum(r.rows for r in batch)
        if self.on_batch is not None:
            try:
                self.on_batch(self.info.graph, size, run_ms)
            except Exception:  # metrics must never break inference
                log.exception("batch callback failed")
        offset = 0
        for r in batch:
            piece = {k: v[offset : offset + r.rows] for k, v in out.items()}
            offset += r.rows
            r.future.set_result((piece, BatchStats((start - r.enqueued) * 1000.0, run_ms, size)))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.engine.close()
