"""The robot's fixed-rate control loop: it never waits on the network longer than a tick allows.

Each tick, on a monotonic clock at ``rate_hz``:

1. read the robot's observation and hand it to the encoder thread (resize + serialize
   happen off this thread; if the link is busy the newest observation wins);
2. wait for *this* frame's answer until the reply deadline (a fraction of the period);
3. execute, in order of preference: the server's answer for this frame ("fresh"); else
   the matching row of the last plan the server sent (``ActionReply.chunk``), as long as
   an answer arrived within ``hold_timeout_s`` ("plan"); else the safe action: base
   stopped, joints held where they are, grippers as last commanded ("safe");
4. record the tick. Answers that come back late still refresh the plan, so the loop
   resumes by itself when the server does.

Slots the loop could not run at all (it fell a whole period behind) are "skipped":
the clock stays on its grid instead of drifting.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xvla.agents.client import PolicyClient, RobotStream
from xvla.agents.observation import ObservationEncoder
from xvla.agents.robot import Robot, RobotObservation
from xvla.agents.scheduling import raise_current_thread
from xvla.agents.stats import FRESH, PLAN, SAFE, ControlStats
from xvla.core.embodiments import safe_action
from xvla.core.embodiments.r1pro import R1PRO_DOMAIN_ID
from xvla.core.tensors import tensor_to_numpy
from xvla.proto import policy_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    rate_hz: float = 30.0
    reply_deadline_s: float | None = None  # wait for this frame's answer; default 60% of the period
    hold_timeout_s: float = 0.5  # trust the held plan this long after the last answer
    start_timeout_s: float = 5.0  # wait this long for the first session before the clock starts
    send_poses: bool | None = None  # None: only to cameras whose spec says needs_pose
    frames: str = "original"  # original | bicubic | numpy (agents/observation.py)
    # Python hands the GIL over every 5 ms by default; the loop thread waking from its sleep
    # may wait that long behind the encoder or the gRPC thread. 1 ms keeps jitter small.
    switch_interval_s: float | None = 0.001
    # SCHED_FIFO priority for the loop thread while it runs (best effort, needs CAP_SYS_NICE;
    # falls back to nice -5, or nothing). None leaves scheduling alone.
    realtime_priority: int | None = 10

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise ValueError(f"loop: rate_hz must be > 0, got {self.rate_hz}")
        if self.reply_deadline_s is None:
            self.reply_deadline_s = 0.6 / self.rate_hz
        if not 0 <= self.reply_deadline_s < 1.0 / self.rate_hz:
            raise ValueError(f"loop: reply_deadline_s must be in [0, period), got {self.reply_deadline_s}")
        if self.hold_timeout_s < 0:
            raise ValueError(f"loop: hold_timeout_s must be >= 0, got {self.hold_timeout_s}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class Plan:
    start_frame: int  # the frame that row 0 is for (reply.frame_index + 1: the chunk is what comes next)
    actions: np.ndarray  # [T, D]

    def action_for(self, frame: int) -> np.ndarray | None:
        i = frame - self.start_frame
        return self.actions[i] if 0 <= i < len(self.actions) else None


class _LatestSlot:
    """A one-item mailbox: a newer put replaces an unread one (counted)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self.replaced = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


def default_header(rate_hz: float = 30.0, instruction: str = "", task_id: int = -1, robot_id: str = "sim-r1pro") -> pb.SessionHeader:
    return pb.SessionHeader(
        robot_id=robot_id, task_id=task_id, instruction=instruction, domain_id=R1PRO_DOMAIN_ID, control_rate_hz=rate_hz
    )


class ControlLoop:
    def __init__(
        self,
        robot: Robot,
        client: PolicyClient,
        header: pb.SessionHeader | None = None,
        config: LoopConfig | None = None,
        on_tick: Callable[[int, str, np.ndarray], None] | None = None,
    ) -> None:
        self.robot = robot
        self.client = client
        self.config = config or LoopConfig()
        self.header = header if header is not None else default_header(self.config.rate_hz)
        if not self.header.control_rate_hz:
            self.header.control_rate_hz = self.config.rate_hz
        self.on_tick = on_tick
        self.stats = ControlStats(rate_hz=self.config.rate_hz)
        self.policy: pb.DescribeResponse | None = None
        self._encoder = ObservationEncoder(send_poses=self.config.send_poses, frames=self.config.frames)
        self._cond = threading.Condition()
        self._replies: dict[int, tuple[pb.ActionReply, float]] = {}
        self._submitted: dict[int, float] = {}
        self._acted_frame = -1
        self._plan: Plan | None = None
        self._last_answer_t: float | None = None
        self._connected = threading.Event()
        self._slot = _LatestSlot()
        self._stop = threading.Event()
        self._stream: RobotStream | None = None
        self._last_action: np.ndarray | None = None
        self._dim_error = ""
        self._waited_s = 0.0

    # -- callbacks from the client's event loop ----------------------------------------
    def _on_state(self, connected: bool, accepted: pb.SessionAccepted | None, reason: str) -> None:
        if connected and accepted is not None:
            policy = accepted.policy
            self.policy = policy
            self._encoder.set_policy(policy)
            dim = policy.action_space.dim
            self._dim_error = (
                f"the policy's actions have {dim} values, the robot takes {self.robot.layout.dim}"
                if dim and dim != self.robot.layout.dim
                else ""
            )
            if self._dim_error and self._dim_error != self.stats.problem:
                self.stats.problem = self._dim_error  # reported once, and in the run's summary
                log.error("%s: its actions will not be executed", self._dim_error)
            self._connected.set()
        else:
            self._connected.clear()
            if reason and not self._stop.is_set():
                log.warning("policy stream lost: %s", reason)

    def _on_reply(self, reply: pb.ActionReply, t_recv: float) -> None:
        frame = int(reply.frame_index)
        chunk = None
        if reply.HasField("chunk") and reply.chunk.shape:
            try:
                chunk = tensor_to_numpy(reply.chunk, "reply.chunk")
                if chunk.ndim != 2:
                    chunk = None
            except ValueError:
                chunk = None
        with self._cond:
            st = self.stats
            st.replies += 1
            if reply.HasField("timings"):  # set once per new chunk: the gate's skill and the route behind it
                st.record_chunk(reply.skill, reply.route)
            if reply.source == pb.STARVED:
                st.starved_replies += 1
            t_sub = self._submitted.pop(frame, None)
            if t_sub is not None:
                st.rtt_ms.append((t_recv - t_sub) * 1e3)
            if self._last_answer_t is not None:
                st.longest_silence_s = max(st.longest_silence_s, t_recv - self._last_answer_t)
            self._last_answer_t = t_recv
            if chunk is not None:  # the remaining plan: row 0 is for the frame after this one
                self._plan = Plan(frame + 1, chunk)
            if frame <= self._acted_frame:
                st.late_replies += 1
            else:
                self._replies[frame] = (reply, t_recv)
                self._cond.notify_all()

    # -- encoder thread ------------------------------------------------------------------
    def _encode_loop(self) -> None:
        # Raised just below the loop thread: the loop needs the GIL this thread holds between numpy
        # calls, and a GIL holder preempted by other processes would stall the loop (priority inversion).
        prio = self.config.realtime_priority
        if prio is not None:
            raise_current_thread(max(1, prio - 1))
        while not self._stop.is_set():
            item = self._slot.take(0.05)
            if item is None:
                continue
            frame, obs = item
            stream = self._stream
            if stream is None:
                continue
            if not stream.connected:
                stream.counters.dropped += 1
                continue
            try:
                enc = self._encoder.encode(frame, obs)
            except Exception as e:  # noqa: BLE001 - a bad frame must not kill the sender
                log.error("could not encode frame %d: %s", frame, e)
                self.stats.last_error = f"encode: {e}"
                continue
            with self._cond:
                self.stats.encode_ms.append(enc.encode_s * 1e3)
                self.stats.encode_cpu_ms.append(enc.encode_cpu_s * 1e3)
                self.stats.raw_bytes_per_frame.append(enc.raw_bytes)
                self.stats.wire_bytes_per_frame.append(enc.wire_bytes)
            stream.send(enc.observation)

    # -- the loop ----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def _choose(self, frame: int, obs: RobotObservation, deadline: float) -> tuple[str, np.ndarray]:
        st = self.stats
        with self._cond:
            while frame not in self._replies and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                t_wait = time.perf_counter()
                self._cond.wait(left)
                self._waited_s += time.perf_counter() - t_wait
            entry = self._replies.pop(frame, None)
            self._acted_frame = frame
            for f in [f for f in self._replies if f < frame]:
                del self._replies[f]
            for f in [f for f in self._submitted if f < frame - 300]:
                del self._submitted[f]  # answers that will never come
            plan, last_t = self._plan, self._last_answer_t
        if entry is not None:
            reply = entry[0]
            if reply.source == pb.HOLD:
                st.server_hold_ticks += 1
                return self._safe(obs, "server_hold")
            action = self._valid_action(reply)
            if action is not None:
                return FRESH, action
        else:
            st.missed_deadlines += 1
        if self._dim_error:
            return self._safe(obs, "mismatch")
        if plan is None or last_t is None:
            return self._safe(obs, "cold_start")
        if time.monotonic() - last_t > self.config.hold_timeout_s:
            return self._safe(obs, "stale_plan")
        a = plan.action_for(frame)
        if a is None:
            return self._safe(obs, "beyond_plan")
        if a.shape != (self.robot.layout.dim,) or not np.all(np.isfinite(a)):
            return self._safe(obs, "invalid_plan")
        return PLAN, np.asarray(a, dtype=np.float32)

    def _warm_up(self) -> None:
        """One observation read and encoded (not sent) before the clock starts: first-call costs
        (buffers, lazy imports, the resize filters) land here, not in the first ticks' slots."""
        if self.policy is None:
            return
        try:
            self._encoder.encode(-1, self.robot.read_observation())
        except Exception as e:  # noqa: BLE001 - the loop's own reads report sensor trouble
            log.debug("warm-up read failed: %s", e)

    def _safe(self, obs: RobotObservation, reason: str) -> tuple[str, np.ndarray]:
        self.stats.record_safe(reason)
        return SAFE, safe_action(self.robot.layout, obs.state, self._last_action)

    def _valid_action(self, reply: pb.ActionReply) -> np.ndarray | None:
        try:
            a = tensor_to_numpy(reply.action, "reply.action").astype(np.float32).reshape(-1)
        except ValueError:
            a = None
        if a is None or self._dim_error or a.shape[0] != self.robot.layout.dim or not np.all(np.isfinite(a)):
            self.stats.invalid_replies += 1
            return None
        return a

    def run(self, seconds: float | None = None, ticks: int | None = None) -> ControlStats:
        """Run for ``seconds`` (or ``ticks``, or until :meth:`stop`); returns the statistics."""
        if self._stream is not None or self.stats.ticks:
            raise RuntimeError("a ControlLoop runs once (its statistics belong to that run): make a new one")
        cfg = self.config
        period = cfg.period_s
        n_slots = ticks if ticks is not None else (round(seconds * cfg.rate_hz) if seconds is not None else None)
        self._stream = self.client.open_stream(self.header, self._on_reply, self._on_state)
        encoder = threading.Thread(target=self._encode_loop, name="xvla-agent-encode", daemon=True)
        encoder.start()
        self._connected.wait(cfg.start_timeout_s)
        old_switch = sys.getswitchinterval()
        if cfg.switch_interval_s:
            sys.setswitchinterval(cfg.switch_interval_s)
        st = self.stats
        undo: list[Callable[[], None]] = []
        if cfg.realtime_priority is not None:
            st.scheduling, undo_loop = raise_current_thread(cfg.realtime_priority)
            # the gRPC thread holds the GIL too (serialising, callbacks): same reason as the encoder's
            io_prio = max(1, cfg.realtime_priority - 1)
            _, undo_io = self.client.run_on_io_thread(lambda: raise_current_thread(io_prio))
            undo += [undo_loop, lambda: self.client.run_on_io_thread(undo_io)]
        self._warm_up()
        t0 = time.monotonic()
        k = 0
        last_obs: RobotObservation | None = None
        try:
            while not self._stop.is_set() and (n_slots is None or k < n_slots):
                t_sched = t0 + k * period
                now = time.monotonic()
                if now < t_sched:
                    time.sleep(t_sched - now)
                    now = time.monotonic()
                behind = int((now - t_sched) // period)
                if behind > 0:  # keep to the grid: the slots we slept through are gone
                    if n_slots is not None:
                        behind = min(behind, n_slots - k)
                    st.skipped_ticks += behind
                    st.skips.append((k, round((now - t_sched) * 1e3, 2), round(st.tick_work_ms[-1], 2)
                                     if st.tick_work_ms else 0.0))
                    k += behind
                    if n_slots is not None and k >= n_slots:
                        break
                    t_sched = t0 + k * period
                st.jitter_ms.append((now - t_sched) * 1e3)
                frame = k
                self._waited_s = 0.0
                c_tick = time.thread_time()
                t_read = time.perf_counter()
                try:
                    obs = self.robot.read_observation()
                    last_obs = obs
                except Exception as e:  # noqa: BLE001 - a sensor glitch must not stop the motors' loop
                    if last_obs is None:
                        raise
                    st.sensor_errors += 1
                    st.last_error = f"read_observation: {e}"
                    obs = None
                robot_s = time.perf_counter() - t_read
                robot_cpu = time.thread_time() - c_tick
                if obs is not None:
                    with self._cond:
                        self._submitted[frame] = time.monotonic()
                    self._slot.put((frame, obs))
                    kind, action = self._choose(frame, obs, t_sched + cfg.reply_deadline_s)
                else:  # nothing to send: hold still on the last good reading
                    st.missed_deadlines += 1
                    kind, action = self._safe(last_obs, "sensor_error")
                t_apply, c_apply = time.perf_counter(), time.thread_time()
                self.robot.apply_action(action)
                robot_s += time.perf_counter() - t_apply
                robot_cpu += time.thread_time() - c_apply
                self._last_action = action
                st.record_tick(kind, time.monotonic())
                done = time.monotonic()
                st.tick_work_ms.append((done - now) * 1e3)
                st.agent_work_ms.append(max(0.0, (done - now) - robot_s - self._waited_s) * 1e3)
                st.agent_cpu_ms.append(max(0.0, time.thread_time() - c_tick - robot_cpu) * 1e3)
                if done - t_sched > period:
                    st.overruns += 1
                if self.on_tick is not None:
                    self.on_tick(frame, kind, action)
                k += 1
        finally:
            st.duration_s = time.monotonic() - t0
            with self._cond:  # a silence the run ended in counts too
                if self._last_answer_t is not None:
                    st.longest_silence_s = max(st.longest_silence_s, time.monotonic() - self._last_answer_t)
            sys.setswitchinterval(old_switch)
            for fn in undo:
                fn()
            self._stop.set()
            encoder.join(2.0)
            stream, self._stream = self._stream, None
            self.client.close_stream(stream)
            c = stream.counters
            st.observations_sent = c.sent
            st.observations_dropped = c.dropped + self._slot.replaced
            st.observations_lost = c.lost
            st.sessions, st.reconnects, st.connect_failures = c.sessions, c.reconnects, c.connect_failures
            st.last_error = st.last_error or c.last_error
            st.problem = st.problem or c.problem
            st.backoffs = c.backoffs
            st.events = list(c.events)
            st.t0_monotonic = t0
        return st
