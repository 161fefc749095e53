"""The checks that replace wall-clock luck in the 30 Hz tests must themselves be able to fail."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.realtime import assert_ticks_explained
from xvla.benchmarks.stream_client import StreamResult, Tick
from xvla.proto import policy_pb2 as pb

PERIOD = 1 / 30


def _stream(starve_at: int, wall_ms: float, trigger: int = 10, horizon: int = 30) -> StreamResult:
    """Chunk 1 planned from frame 0 (first reply), chunk 2 from ``trigger``; frame ``starve_at`` waited for chunk 2."""
    res = StreamResult(accepted=None)
    for f in range(40):
        r = pb.ActionReply(frame_index=f, source=pb.QUEUE)
        if f == 0:
            r.source, r.planned_from_frame = pb.FIRST_CHUNK, 0
            r.timings.wall_ms = 50.0
        elif f < starve_at:
            r.planned_from_frame = 0
        else:
            r.planned_from_frame = trigger
            if f == starve_at:
                r.source = pb.STARVED
                r.timings.wall_ms = wall_ms
        r.queue_depth = max(0, horizon - 1 - (f - r.planned_from_frame))
        sent = f * PERIOD
        res.ticks.append(Tick(f, 5.0, r.source, np.zeros(2, np.float32), r, sent, sent + 0.005))
    return res


def test_a_starved_tick_behind_a_slow_chunk_is_explained():
    # replan threshold 20: frame 10 is the first with 19 queued; frame 30 starved, the chunk took 700 ms
    assert_ticks_explained(_stream(starve_at=30, wall_ms=700.0), replan_threshold=20)


def test_a_starved_tick_behind_a_fast_chunk_is_not():
    with pytest.raises(AssertionError, match="took 100 ms of the 662 ms"):
        assert_ticks_explained(_stream(starve_at=30, wall_ms=100.0), replan_threshold=20)


def test_a_late_replan_is_not():
    # the queue fell below 20 at frame 10, yet the chunk was planned from frame 25
    with pytest.raises(AssertionError, match="replanning started late"):
        assert_ticks_explained(_stream(starve_at=30, wall_ms=700.0, trigger=25), replan_threshold=20)
