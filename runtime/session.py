"""One robot's streaming session: answer every observation at once, plan chunks in the background.

Per observation (frame f), on the event loop:
1. cheap validation (wire.check_observation), strictly increasing frame index;
2. the action for f comes from the ActionPlan; if nothing covers f the tick waits for the
   chunk in flight (or starts one) and is answered STARVED (FIRST_CHUNK for the session's
   first reply) -- counted, never hidden;
3. when fewer than ``replan_threshold`` future actions remain and no chunk is in flight,
   a new chunk is planned from this observation in a worker thread.

Planning (worker thread): decode, then the policy kind (service.plan_chunk): the gate policy
prepares the observation, the skill gate picks the skill and the route, the route's policy
plans the chunk (RTC: with the committed actions as prefix). Engine calls go through the
shared batchers, so concurrent sessions share engine calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xvla.core.errors import InputError
from xvla.core.limits import check_instruction, check_name
from xvla.core.tensors import numpy_to_tensor
from xvla.proto import policy_pb2 as pb
from xvla.runtime.execution import ActionPlan, ExecutionConfig, ExecutionMode, SkillChange
from xvla.runtime.policies.base import ObservationInput
from xvla.runtime.skills import SkillGate
from xvla.runtime.wire import check_observation, decode_cameras

if TYPE_CHECKING:
    from xvla.runtime.service import PolicyService

log = logging.getLogger(__name__)

MODES = {
    pb.TEMPORAL_ENSEMBLE: ExecutionMode.TEMPORAL_ENSEMBLE,
    pb.RECEDING_HORIZON: ExecutionMode.RECEDING_HORIZON,
    pb.RTC: ExecutionMode.RTC,
}
SKILL_CHANGES = {pb.FLUSH: SkillChange.FLUSH, pb.BLEND: SkillChange.BLEND}


@dataclass
class PlannedChunk:
    actions: np.ndarray  # [T, D]
    skill_id: int
    skill: str
    progress: float
    route: str
    timings: dict[str, float]
    skill_changed: bool = False
    text: str = ""


@dataclass
class SessionTarget:
    """What a session (or a unary Infer) asks of the policy: validated header fields."""

    task_id: int | None
    domain_id: int
    instruction: str
    forced_skill: tuple[int, str] | None
    forced_route: str | None
    steps: int
    control_rate_hz: float
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    max_new_tokens: int | None = None  # for policy kinds that generate text; None = the bundle's default


# The named StageTimings fields kept filled for clients written before ``stage_ms`` (X-VLA's stages).
_LEGACY_STAGES = ("preprocess", "vlm", "geometry", "denoise", "decode")


def stage_timings(t: dict[str, float]) -> pb.StageTimings:
    """A chunk's timings dict (Timings.as_dict) -> the wire message: every stage in stage_ms, legacy fields too."""
    stages = {k: float(v) for k, v in t.items() if k not in ("queue_wait", "total", "wall", "batch_size")}
    return pb.StageTimings(**{f"{k}_ms": stages.get(k, 0.0) for k in _LEGACY_STAGES},
                           queue_wait_ms=t.get("queue_wait", 0.0), total_ms=t.get("total", 0.0),
                           wall_ms=t.get("wall", 0.0),
                           batch_size=int(t.get("batch_size", 1)), stage_ms=stages)


def resolve_header(service: "PolicyService", header: pb.SessionHeader, field: str = "header") -> SessionTarget:
    """Validates a SessionHeader against the served policies; every error names its field."""
    spec = service.gate_policy.spec
    check_instruction(header.instruction, f"{field}.instruction")  # before anything tokenises it
    for name in ("session_id", "robot_id", "skill", "route"):
        check_name(getattr(header, name), f"{field}.{name}")
    known_tasks = {int(t["id"]) for t in spec.tasks}
    if spec.needs_task:
        if header.task_id < 0 or (known_tasks and header.task_id not in known_tasks):
            raise InputError(f"{field}.task_id", f"unknown task {header.task_id}; known task ids: {_ranges(known_tasks)}")
        task_id: int | None = int(header.task_id)
    else:
        if header.task_id not in (0, -1):
            raise InputError(f"{field}.task_id", f"unknown task {header.task_id}: this policy has no task prompts (use -1)")
        task_id = None
    domain_id = int(header.domain_id) if header.HasField("domain_id") else spec.default_domain
    if not 0 <= domain_id < spec.num_domains:
        raise InputError(f"{field}.domain_id", f"must be in [0, {spec.num_domains}), got {domain_id}")
    forced_skill = None
    if header.skill:
        names = {str(s["name"]): int(s["id"]) for s in spec.skills}
        if header.skill not in names:
            raise InputError(f"{field}.skill", f"unknown skill {header.skill!r}; known skills: {sorted(names)}")
        forced_skill = (names[header.skill], header.skill)
    forced_route = None
    if header.route:
        if header.route not in service.policies:
            raise InputError(f"{field}.route", f"unknown route {header.route!r}; routes: {sorted(service.policies)}")
        forced_route = header.route
    rate = header.control_rate_hz or service.config.control_rate_hz
    if not (math.isfinite(rate) and 0 < rate <= 1000):
        raise InputError(f"{field}.control_rate_hz", f"must be in (0, 1000], got {rate}")
    ex = header.execution
    if ex.mode not in (0, *MODES):
        raise InputError(f"{field}.execution.mode", f"unknown mode {ex.mode}")
    if ex.on_skill_change not in (0, *SKILL_CHANGES):
        raise InputError(f"{field}.execution.on_skill_change", f"unknown value {ex.on_skill_change}")
    d = service.config.execution
    default_change = SkillChange(service.routes.on_skill_change) if service.routes else d.on_skill_change
    cfg = ExecutionConfig(
        mode=MODES.get(ex.mode, d.mode),
        ensemble_k=ex.ensemble_k if ex.ensemble_k else d.ensemble_k,
        replan_threshold=ex.replan_threshold or d.replan_threshold,
        execute_horizon=ex.execute_horizon or d.execute_horizon,
        denoising_steps=ex.denoising_steps or spec.default_steps,
        on_skill_change=SKILL_CHANGES.get(ex.on_skill_change, default_change),
        latency_compensation=not ex.disable_latency_compensation,
        newest_wins_dims=tuple(ex.newest_wins_dims) or spec.gripper_dims,
        rtc_delay_frames=ex.rtc_delay_frames,
    )
    if cfg.mode is ExecutionMode.RTC and not spec.supports_prefix:
        raise InputError(f"{field}.execution.mode", f"RTC needs a sampler that takes a committed prefix; "
                                                    f"policy kind {spec.kind!r} does not")
    try:
        cfg.validate(spec.horizon, spec.action_dim)
    except ValueError as exc:
        raise InputError(f"{field}.{str(exc).split(' ')[0]}", str(exc).split(" ", 1)[1]) from None
    max_new_tokens = None
    if header.HasField("max_new_tokens"):
        if not 1 <= header.max_new_tokens <= 1024:
            raise InputError(f"{field}.max_new_tokens", f"must be in [1, 1024], got {header.max_new_tokens}")
        max_new_tokens = int(header.max_new_tokens)
    return SessionTarget(task_id, domain_id, header.instruction, forced_skill, forced_route,
                         int(cfg.denoising_steps), float(rate), cfg, max_new_tokens)


def _ranges(ids: set[int]) -> str:
    """{0, 1, 2, 5} -> '0-2, 5' (error messages stay short for 50 tasks)."""
    out: list[str] = []
    for i in sorted(ids):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = out[-1].split("-")[0] + f"-{i}"
        else:
            out.append(str(i))
    return ", ".join(out) or "none"


class Session:
    def __init__(self, service: "PolicyService", header: pb.SessionHeader) -> None:
        self.service = service
        self.target = resolve_header(service, header)
        self.id = header.session_id or uuid.uuid4().hex[:12]
        self.robot_id = header.robot_id
        self.instruction = self.target.instruction
        spec = service.gate_policy.spec
        self.spec = spec
        self.plan = ActionPlan(self.target.execution, spec.horizon, spec.action_dim)
        self.gate = (SkillGate(list(spec.skills), service.routes.gating)
                     if spec.has_skill_head and spec.skills and self.target.forced_skill is None else None)
        self._last_frame: int | None = None
        self._waiting_frame: int | None = None
        self._inflight: asyncio.Task | None = None
        self._last_action = np.zeros((spec.action_dim,), np.float32)
        self._last_reported_chunk = -1
        self._skill = ("", -1, math.nan)
        self._route = service.routes.default if service.routes else ""
        self._error: BaseException | None = None
        self.latency_s = 0.0  # EMA of plan start -> chunk arrival
        self.replies = 0
        self.starved_ticks = 0
        self.chunks = 0

    # ------------------------------------------------------------------ ticks
    async def on_observation(self, obs: pb.Observation) -> pb.ActionReply:
        t_recv = time.perf_counter()
        if self._error is not None:  # a background chunk failed: this stream ends with its status
            raise self._error
        f = int(obs.frame_index)
        if self._last_frame is not None and f <= self._last_frame:
            raise InputError("observation.frame_index", f"must increase: got {f} after {self._last_frame}")
        proprio = check_observation(obs, self.spec)
        if obs.instruction:
            self.instruction = obs.instruction
        self.plan.prune(f)
        got = self.plan.action_at(f)
        source = pb.QUEUE
        if got is None:
            first = self.replies == 0
            if self._inflight is None:
                self._start_planning(obs, proprio, f)
            self._waiting_frame = f
            try:
                await asyncio.shield(self._inflight)  # type: ignore[arg-type]
            finally:
                self._waiting_frame = None
            got = self.plan.action_at(f)
            source = pb.FIRST_CHUNK if first else (pb.STARVED if got is not None else pb.HOLD)
            if source != pb.FIRST_CHUNK:
                self.starved_ticks += 1
                self.service.metrics.starved_ticks.inc()
        self._last_frame = f
        if self._inflight is None and self.plan.needs_replan(f):
            self._start_planning(obs, proprio, f)
        reply = self._reply(f, got, source)
        self.replies += 1
        m = self.service.metrics
        m.ticks.labels(pb.ActionSource.Name(source)).inc()
        m.queue_depth.observe(reply.queue_depth)
        m.tick_seconds.labels(pb.ActionSource.Name(source)).observe(time.perf_counter() - t_recv)
        return reply

    def _reply(self, f: int, got: tuple[np.ndarray, Any] | None, source: int) -> pb.ActionReply:
        skill, skill_id, progress = self._skill
        reply = pb.ActionReply(frame_index=f, source=source, skill=skill, skill_id=skill_id, progress=progress,
                               queue_depth=self.plan.depth_after(f), starved_ticks=self.starved_ticks,
                               route=self._route)
        if got is None:  # HOLD: the robot keeps the last action we sent
            reply.action.CopyFrom(numpy_to_tensor(self._last_action))
            return reply
        action, chunk = got
        self._last_action = action
        reply.action.CopyFrom(numpy_to_tensor(action))
        reply.chunk_id = chunk.chunk_id
        reply.planned_from_frame = chunk.obs_frame
        reply.route = chunk.info.get("route", self._route)
        if chunk.chunk_id != self._last_reported_chunk:
            self._last_reported_chunk = chunk.chunk_id
            reply.timings.CopyFrom(stage_timings(chunk.info.get("timings", {})))
            reply.text = chunk.info.get("text", "")
            rest = self.plan.committed(f + 1, self.plan.horizon)
            if len(rest):
                reply.chunk.CopyFrom(numpy_to_tensor(rest))
        return reply

    # ------------------------------------------------------------------ planning
    def _start_planning(self, obs: pb.Observation, proprio: np.ndarray, frame: int) -> None:
        committed = None
        if self.plan.config.mode is ExecutionMode.RTC and self.plan.chunks:
            d = self.plan.rtc_delay_frames(self.latency_s, self.target.control_rate_hz)
            committed = self.plan.committed(frame, d)
        t_start = time.perf_counter()  # this observation's tick: its chunk's wall time starts here
        task = asyncio.get_running_loop().create_task(self._plan(obs, proprio, frame, committed, t_start))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # kept in self._error, raised next tick
        self._inflight = task

    async def _plan(self, obs: pb.Observation, proprio: np.ndarray, frame: int, committed: np.ndarray | None,
                    t0: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            planned: PlannedChunk = await loop.run_in_executor(
                self.service.pool, self._plan_sync, obs, proprio, self.instruction, frame, committed)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._inflight = None
        elapsed = time.perf_counter() - t0
        self.latency_s = elapsed if self.chunks == 0 else 0.7 * self.latency_s + 0.3 * elapsed
        current = self._waiting_frame if self._waiting_frame is not None else (
            (self._last_frame + 1) if self._last_frame is not None else frame)
        planned.timings["queue_wait"] = planned.timings.get("queue_wait", 0.0)
        planned.timings["wall"] = elapsed * 1000.0
        self.plan.add_chunk(planned.actions, frame, current, planned.skill_id,
                            {"timings": planned.timings, "route": planned.route, "text": planned.text})
        self.chunks += 1
        self._skill = (planned.skill, planned.skill_id, planned.progress)
        self._route = planned.route
        self.service.metrics.observe_chunk(planned.route, planned.timings)
        if planned.skill_changed and self.chunks > 1:
            self.service.metrics.skill_switches.inc()
            log.info("skill change", extra={"session": self.id, "skill": planned.skill, "route": planned.route,
                                            "frame": frame})

    def _plan_sync(self, obs: pb.Observation, proprio: np.ndarray, instruction: str, frame: int,
                   committed: np.ndarray | None) -> PlannedChunk:
        """Worker thread: one chunk for this session (through the shared batchers)."""
        return self.service.plan_chunk(
            target=self.target, gate=self.gate, observation=ObservationInput(decode_cameras(obs), proprio, instruction),
            committed=committed)

    # ------------------------------------------------------------------ end
    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
            except Exception:  # the stream is over either way
                pass

    def summary(self) -> dict[str, Any]:
        return {"session": self.id, "robot": self.robot_id, "replies": self.replies, "chunks": self.chunks,
                "starved_ticks": self.starved_ticks, "dropped_stale_actions": self.plan.dropped_stale_actions}

