"""Dynamic batching: concurrent callers share engine calls, results go back to the right caller."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.runtime.fakes import RecordingEngine
from xvla.runtime.batching import BatchingEngine, Planners


def _call(batcher: BatchingEngine, planners: Planners, value: float, barrier: threading.Barrier | None, width: int = 3):
    with planners:
        if barrier is not None:
            barrier.wait()
        out, stats = batcher.run_with_stats({"a": np.full((1, width), value, np.float32), "b": np.zeros((1, width), np.float32)})
        return out["out"], stats


def test_concurrent_callers_are_batched_and_results_routed_back():
    engine = RecordingEngine()
    planners = Planners()
    batcher = BatchingEngine(engine, max_batch=8, window_ms=2000, planners=planners)
    barrier = threading.Barrier(4)
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(_call, batcher, planners, float(i), barrier) for i in range(4)]
        results = [f.result(timeout=10) for f in futs]
    batcher.close()
    for i, (out, stats) in enumerate(results):
        assert out.shape == (1, 2) and out[0, 0] == pytest.approx(i)  # each caller gets its own row
        assert stats.batch_size == 4
    # all four planners were waiting: one engine call, and the 2 s window closed early
    assert engine.calls == [4]
    assert max(s.wait_ms for _, s in results) < 1500


def test_max_batch_splits_and_window_bounds_the_wait():
    engine = RecordingEngine()
    planners = Planners()
    batcher = BatchingEngine(engine, max_batch=2, window_ms=50, planners=planners)
    barrier = threading.Barrier(3)
    with ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(_call, batcher, planners, float(i), barrier) for i in range(3)]
        outs = [f.result(timeout=10)[0][0, 0] for f in futs]
    batcher.close()
    assert sorted(outs) == pytest.approx([0, 1, 2])
    assert sorted(engine.calls) == [1, 2]


def test_lone_caller_does_not_wait_for_the_window():
    engine = RecordingEngine()
    planners = Planners()
    batcher = BatchingEngine(engine, max_batch=8, window_ms=5000, planners=planners)
    t0 = time.perf_counter()
    _call(batcher, planners, 1.0, None)
    assert time.perf_counter() - t0 < 1.0
    batcher.close()


def test_different_shapes_are_not_mixed():
    engine = RecordingEngine()
    planners = Planners()
    batcher = BatchingEngine(engine, max_batch=8, window_ms=200, planners=planners)
    barrier = threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        f1 = pool.submit(_call, batcher, planners, 1.0, barrier, 3)
        f2 = pool.submit(_call, batcher, planners, 2.0, barrier, 5)
        assert f1.result(timeout=10)[0][0, 0] == pytest.approx(1.0)
        assert f2.result(timeout=10)[0][0, 0] == pytest.approx(2.0)
    batcher.close()
    assert engine.calls == [1, 1]


def test_engine_errors_reach_every_waiter():
    class Broken(RecordingEngine):
        def run(self, inputs):
            raise RuntimeError("boom")

    batcher = BatchingEngine(Broken(), max_batch=4, window_ms=1)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.run({"a": np.zeros((1, 2), np.float32), "b": np.zeros((1, 2), np.float32)})
    batcher.close()


def test_lone_planner_runs_inline_without_the_batcher_thread():
    """Issue 13 (CPU chunk loop): a lone planner's 10+ engine calls per chunk skip the hand-off to the
    batcher thread and back; concurrent planners still batch (test above)."""

    class ThreadRecording(RecordingEngine):
        def run(self, inputs):
            self.threads = getattr(self, "threads", []) + [threading.current_thread().name]
            return super().run(inputs)

    engine = ThreadRecording()
    planners = Planners()
    batcher = BatchingEngine(engine, max_batch=8, window_ms=5000, planners=planners)
    for i in range(5):
        out, stats = _call(batcher, planners, float(i), None)
        assert out[0, 0] == pytest.approx(i) and stats.batch_size == 1
    assert batcher.inline_calls == 5 and engine.threads == [threading.current_thread().name] * 5
    # without a Planners registry (nobody says who is planning) the batcher thread runs every call
    plain = BatchingEngine(engine, max_batch=8, window_ms=0)
    plain.run({"a": np.ones((1, 3), np.float32), "b": np.ones((1, 3), np.float32)})
    assert plain.inline_calls == 0 and engine.threads[-1].startswith("batcher-")
    batcher.close()
    plain.close()
