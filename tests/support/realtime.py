"""Real-time claims a test can make on a shared machine: causes, not wall-clock luck.

A test that streams at 30 Hz cannot promise "zero starved ticks" when another job may take the
CPU for a second (that figure is a benchmark's). It can promise that the record explains every
tick: each chunk was started at the first frame whose planned queue fell below the threshold,
and a tick starved only when its chunk took longer, by the server's own clock, than the robot's
clock gave it.
"""

from __future__ import annotations

from xvla.benchmarks.stream_client import StreamResult
from xvla.proto import policy_pb2 as pb


def assert_ticks_explained(res: StreamResult, replan_threshold: int) -> None:
    ticks = sorted(res.ticks, key=lambda t: t.frame)
    by_frame = {t.frame: t for t in ticks}
    assert all(t.source != pb.HOLD for t in ticks), "HOLD: a chunk could not be planned at all"
    # chunk -> the frame it was planned from and the first reply that carried it (its arrival)
    arrivals = [(t.reply.planned_from_frame, t.frame) for t in ticks if t.reply.HasField("timings")]
    for (_, arrived), (trigger, _) in zip(arrivals, arrivals[1:]):
        # replanning starts at the first frame after a chunk lands whose queue is below the threshold
        early = [g for g in range(arrived, trigger) if g in by_frame and by_frame[g].reply.queue_depth < replan_threshold]
        assert not early, (f"frames {early[:5]} had fewer than {replan_threshold} actions queued, yet the next chunk "
                           f"was planned from frame {trigger}: replanning started late")
    for t in ticks:
        if t.source != pb.STARVED:
            continue
        p = int(t.reply.planned_from_frame)
        assert t.reply.HasField("timings"), f"frame {t.frame}: starved, yet no new chunk came with the reply"
        if p in by_frame:
            allowed_ms = (t.sent_s - by_frame[p].recv_s) * 1000.0  # the trigger's reply .. the starved frame sent
            assert t.reply.timings.wall_ms >= allowed_ms - 1.0, (
                f"frame {t.frame} starved although its chunk (planned from frame {p}) took "
                f"{t.reply.timings.wall_ms:.0f} ms of the {allowed_ms:.0f} ms the robot's clock allowed")


def assert_safe_ticks_explained(st: dict, hold_timeout_s: float = 0.5) -> None:
    """A control loop's safe ticks (``ControlStats.summary()`` + timeline) have causes in its record:
    the cold start (only before the first answer, so only at the beginning) or the service going
    silent for longer than the hold timeout; never a plan that ran out or a mismatch."""
    reasons = st["safe_reasons"]
    assert sum(reasons.values()) == st["safe_ticks"], st
    assert set(reasons) <= {"cold_start", "stale_plan"}, reasons
    cold = reasons.get("cold_start", 0)
    assert st["timeline"][:cold] == "S" * cold, "cold-start safe ticks after the first answer"
    if reasons.get("stale_plan"):
        assert st["longest_silence_s"] > hold_timeout_s, (reasons, st["longest_silence_s"])
