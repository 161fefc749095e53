"""Control-loop statistics: every tick is accounted for, with timing distributions.

The identity ``ticks == fresh + plan + safe`` always holds, and ``ticks + skipped`` is
the number of clock slots in the run, so a report shows at a glance where each tick
of the robot's time went.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

# One character per executed tick in ``timeline``.
FRESH, PLAN, SAFE = "F", "P", "S"


def _dist(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    a = np.asarray(samples, dtype=np.float64)
    return {
        "n": int(a.size),
        "mean": round(float(a.mean()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


@dataclass
class ControlStats:
    rate_hz: float
    duration_s: float = 0.0
    ticks: int = 0  # ticks executed
    fresh_ticks: int = 0  # executed the server's answer for this very frame
    plan_ticks: int = 0  # answer late or lost: executed the held plan
    safe_ticks: int = 0  # executed the safe action (no usable plan, timeout, or server HOLD)
    server_hold_ticks: int = 0  # of safe_ticks: the server itself said HOLD
    # why each safe tick was safe: cold_start (no answer yet), server_hold, stale_plan (no answer for
    # hold_timeout_s), beyond_plan (the plan ran out), invalid_plan, mismatch, sensor_error
    safe_reasons: dict[str, int] = field(default_factory=dict)
    longest_silence_s: float = 0.0  # the longest wait between two consecutive answers
    skipped_ticks: int = 0  # clock slots the loop never ran (it fell a whole period behind)
    # each time it fell behind: (first slot lost, how late the loop woke in ms, the previous tick's work in ms)
    skips: list[tuple[int, float, float]] = field(default_factory=list)
    missed_deadlines: int = 0  # ticks whose answer was not there by the reply deadline
    overruns: int = 0  # ticks whose own work took longer than one period
    replies: int = 0
    late_replies: int = 0  # answers that arrived after their tick had acted
    invalid_replies: int = 0  # wrong size or non-finite actions (never executed)
    sensor_errors: int = 0  # read_observation failed: safe action on the last good reading
    starved_replies: int = 0  # the server had to wait for inference (ActionSource.STARVED)
    observations_sent: int = 0
    observations_dropped: int = 0  # never sent: disconnected, or replaced by a newer one
    observations_lost: int = 0  # sent, but the stream died before the answer
    sessions: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    last_error: str = ""
    problem: str = ""  # a robot/policy mismatch the service (or the agent) reported: reported once
    backoffs: int = 0  # reconnects that waited (exponential, capped) because the session made no progress
    scheduling: str = "default"  # what the loop thread ran with (SCHED_FIFO:10, nice:-5, default)
    jitter_ms: list[float] = field(default_factory=list)  # tick start - scheduled start
    rtt_ms: list[float] = field(default_factory=list)  # observation submitted -> its answer received
    tick_work_ms: list[float] = field(default_factory=list)  # tick start -> action applied
    # the agent's own work in a tick: without the robot's read/apply and without waiting for the answer
    agent_work_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    encode_cpu_ms: list[float] = field(default_factory=list)  # the encoder thread's CPU time per frame
    agent_cpu_ms: list[float] = field(default_factory=list)  # the loop thread's CPU time per tick (robot read/apply excluded)
    raw_bytes_per_frame: list[int] = field(default_factory=list)
    wire_bytes_per_frame: list[int] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    tick_t: list[float] = field(default_factory=list)  # time.monotonic() when each executed tick acted
    events: list[tuple[float, str, str]] = field(default_factory=list)  # the stream's session events
    t0_monotonic: float = 0.0  # the loop's start (CLOCK_MONOTONIC: comparable across processes)
    # the policy's skill gate and routing as the robot saw them: chunks per "skill @ route", and switches
    skill_chunks: dict[str, int] = field(default_factory=dict)
    skill_switches: int = 0
    last_skill: str = ""

    def record_chunk(self, skill: str, route: str) -> None:
        """A reply that brought a new chunk: which skill the gate chose and which route planned it."""
        key = f"{skill or '-'} @ {route or '-'}"
        self.skill_chunks[key] = self.skill_chunks.get(key, 0) + 1
        if self.last_skill and skill != self.last_skill:
            self.skill_switches += 1
        self.last_skill = skill

    def record_tick(self, kind: str, t: float | None = None) -> None:
        self.ticks += 1
        self.timeline.append(kind)
        if t is not None:
            self.tick_t.append(t)
        if kind == FRESH:
            self.fresh_ticks += 1
        elif kind == PLAN:
            self.plan_ticks += 1
        elif kind == SAFE:
            self.safe_ticks += 1
        else:
            raise ValueError(f"unknown tick kind {kind!r}")

    def record_safe(self, reason: str) -> None:
        self.safe_reasons[reason] = self.safe_reasons.get(reason, 0) + 1

    def accounted(self) -> bool:
        return self.ticks == self.fresh_ticks + self.plan_ticks + self.safe_ticks == len(self.timeline)

    def summary(self) -> dict:
        return {
            "rate_hz": self.rate_hz,
            "duration_s": round(self.duration_s, 3),
            "ticks": self.ticks,
            "fresh_ticks": self.fresh_ticks,
            "plan_ticks": self.plan_ticks,
            "safe_ticks": self.safe_ticks,
            "server_hold_ticks": self.server_hold_ticks,
            "safe_reasons": dict(self.safe_reasons),
            "longest_silence_s": round(self.longest_silence_s, 3),
            "skipped_ticks": self.skipped_ticks,
            "skips": [list(x) for x in self.skips[:100]],
            "missed_deadlines": self.missed_deadlines,
            "overruns": self.overruns,
            "replies": self.replies,
            "late_replies": self.late_replies,
            "invalid_replies": self.invalid_replies,
            "sensor_errors": self.sensor_errors,
            "starved_replies": self.starved_replies,
            "observations_sent": self.observations_sent,
            "observations_dropped": self.observations_dropped,
            "observations_lost": self.observations_lost,
            "sessions": self.sessions,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "last_error": self.last_error,
            "problem": self.problem,
            "backoffs": self.backoffs,
            "skill_chunks": dict(self.skill_chunks),
            "skill_switches": self.skill_switches,
            "scheduling": self.scheduling,
            "jitter_ms": _dist(self.jitter_ms),
            "rtt_ms": _dist(self.rtt_ms),
            "tick_work_ms": _dist(self.tick_work_ms),
            "agent_work_ms": _dist(self.agent_work_ms),
            "encode_ms": _dist(self.encode_ms),
            "encode_cpu_ms": _dist(self.encode_cpu_ms),
            "agent_cpu_ms": _dist(self.agent_cpu_ms),
            "raw_bytes_per_frame": int(np.mean(self.raw_bytes_per_frame)) if self.raw_bytes_per_frame else 0,
            "wire_bytes_per_frame": int(np.mean(self.wire_bytes_per_frame)) if self.wire_bytes_per_frame else 0,
            "accounted": self.accounted(),
        }

    def ticks_and_events(self) -> dict:
        """Per-tick timeline (kind + time since start, s) and the session events (failovers) with times."""
        t0 = self.t0_monotonic
        return {
            "t0_monotonic": t0,
            "timeline": "".join(self.timeline),
            "tick_t_s": [round(t - t0, 4) for t in self.tick_t],
            "events": [{"t_s": round(t - t0, 4), "event": e, "detail": d} for t, e, d in self.events],
        }

    def to_json(self, timeline: bool = True) -> str:
        out = self.summary()
        if timeline:
            out.update(self.ticks_and_events())
        return json.dumps(out, indent=2)

    def format(self) -> str:
        """A human-readable report (plain text: the robot install has no rich)."""
        s = self.summary()

        def d(name: str) -> str:
            v = s[name]
            if not v.get("n"):
                return f"{name:<14} -"
            return f"{name:<14} p50 {v['p50']:8.2f}  p95 {v['p95']:8.2f}  p99 {v['p99']:8.2f}  max {v['max']:8.2f}  (n={v['n']})"

        slots = self.ticks + self.skipped_ticks
        lines = [
            f"control loop: {self.ticks} ticks in {self.duration_s:.2f} s at {self.rate_hz:g} Hz ({slots} slots,"
            f" thread {self.scheduling})",
            f"  executed      fresh {self.fresh_ticks}  plan {self.plan_ticks}  safe {self.safe_ticks}"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(self.safe_reasons.items()))})" if self.safe_reasons else ""),
            f"  timing        skipped {self.skipped_ticks}  overruns {self.overruns}  missed deadlines {self.missed_deadlines}",
            f"  replies       {self.replies}  late {self.late_replies}  invalid {self.invalid_replies}  starved {self.starved_replies}"
            f"  longest silence {self.longest_silence_s:.2f} s"
            + (f"  sensor errors {self.sensor_errors}" if self.sensor_errors else ""),
            f"  observations  sent {self.observations_sent}  dropped {self.observations_dropped}  lost {self.observations_lost}",
            f"  sessions      {self.sessions}  reconnects {self.reconnects}  connect failures {self.connect_failures}"
            + (f"  backed off {self.backoffs}" if self.backoffs else ""),
            f"  bytes/frame   raw {s['raw_bytes_per_frame']:,}  wire {s['wire_bytes_per_frame']:,}",
            "  " + d("jitter_ms"),
            "  " + d("rtt_ms"),
            "  " + d("tick_work_ms"),
            "  " + d("agent_work_ms"),
            "  " + d("encode_ms"),
        ]
        if self.skill_chunks:
            top = sorted(self.skill_chunks.items(), key=lambda kv: -kv[1])[:4]
            more = f" (+{len(self.skill_chunks) - 4} more)" if len(self.skill_chunks) > 4 else ""
            lines.append("  skills        " + ", ".join(f"{k} x{n}" for k, n in top) + more
                         + f"  switches {self.skill_switches}")
        if self.problem:
            lines.append(f"  MISMATCH      {self.problem}")
        if self.last_error and self.last_error != self.problem:
            lines.append(f"  last error    {self.last_error}")
        return "\n".join(lines)
