"""Per-session action plan: which action to execute at a frame, given the chunks planned so far.

Everything is indexed by the robot's frame counter, not by "the next item of a queue":
a chunk planned from the observation of frame f0 holds the actions for frames f0, f0+1, ...
That makes latency compensation a lookup (frames that passed while inference ran are simply
never asked for) and makes skipped robot frames harmless.

Three ways to combine chunks (ExecutionMode):
- TEMPORAL_ENSEMBLE (ACT): every chunk covering the frame votes with weight exp(-k*i),
  i = 0 the oldest; dims in ``newest_wins_dims`` (grippers) take the newest chunk instead,
  since averaging an open and a closed gripper command gives a half-open one.
- RECEDING_HORIZON: the newest chunk only, and only its first ``execute_horizon`` actions.
- RTC (real-time chunking): the newest chunk only, all of it; the chunk was generated with
  the plan's own actions for the inference window imposed as a prefix (see ``committed``),
  so switching to it is seamless.

This module is pure numpy and synchronous: the session drives it, the tests hand-compute it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np


class ExecutionMode(enum.Enum):
    TEMPORAL_ENSEMBLE = "temporal_ensemble"
    RECEDING_HORIZON = "receding_horizon"
    RTC = "rtc"


class SkillChange(enum.Enum):
    FLUSH = "flush"  # a chunk of a new skill drops every older chunk
    BLEND = "blend"  # older chunks keep voting (ensemble mode)


@dataclass
class ExecutionConfig:
    """Resolved execution settings of one session (zeros of the wire message already replaced by defaults)."""

    mode: ExecutionMode = ExecutionMode.TEMPORAL_ENSEMBLE
    ensemble_k: float = 0.01
    replan_threshold: int | None = None  # replan when fewer future actions are planned; None = horizon // 2
    execute_horizon: int | None = None  # RECEDING_HORIZON: actions of a chunk that may execute; None = horizon
    denoising_steps: int = 10
    on_skill_change: SkillChange = SkillChange.FLUSH
    latency_compensation: bool = True
    newest_wins_dims: tuple[int, ...] = ()
    rtc_delay_frames: int = 0  # RTC prefix length; 0 = estimated from the measured inference latency

    def resolve(self, horizon: int) -> "ExecutionConfig":
        """Fills the horizon-dependent defaults in place; returns self."""
        if self.replan_threshold is None:
            self.replan_threshold = horizon // 2
        if self.execute_horizon is None:
            self.execute_horizon = horizon
        return self

    def validate(self, horizon: int, dim: int) -> None:
        """Raises ValueError naming the setting (the server maps it to INVALID_ARGUMENT)."""
        self.resolve(horizon)
        if not math.isfinite(self.ensemble_k) or self.ensemble_k < 0:
            raise ValueError(f"execution.ensemble_k must be finite and >= 0, got {self.ensemble_k}")
        if not 0 <= self.replan_threshold <= horizon:
            raise ValueError(f"execution.replan_threshold must be in [0, {horizon}], got {self.replan_threshold}")
        if not 1 <= self.execute_horizon <= horizon:
            raise ValueError(f"execution.execute_horizon must be in [1, {horizon}], got {self.execute_horizon}")
        if not 1 <= self.denoising_steps <= 1000:
            raise ValueError(f"execution.denoising_steps must be in [1, 1000], got {self.denoising_steps}")
        bad = [d for d in self.newest_wins_dims if not 0 <= d < dim]
        if bad:
            raise ValueError(f"execution.newest_wins_dims {bad} out of range for action dim {dim}")
        if not 0 <= self.rtc_delay_frames < horizon:
            raise ValueError(f"execution.rtc_delay_frames must be in [0, {horizon - 1}], got {self.rtc_delay_frames}")


@dataclass
class Chunk:
    """One planned chunk placed on the frame axis: ``actions[j]`` is for frame ``start_frame + j``."""

    chunk_id: int
    start_frame: int
    actions: np.ndarray  # [T, D] float32, postprocessed (what the robot executes)
    obs_frame: int  # the observation it was planned from
    skill_id: int = -1
    end_frame: int = 0  # exclusive; set by the plan (start + T, or start + execute_horizon)
    active_from: int = 0  # the first frame still to come when it arrived: earlier actions are dropped
    info: dict = field(default_factory=dict)  # timings, skill, route: passed through to replies

    def covers(self, frame: int) -> bool:
        return max(self.start_frame, self.active_from) <= frame < self.end_frame

    def at(self, frame: int) -> np.ndarray:
        return self.actions[frame - self.start_frame]


def act_weights(n: int, k: float) -> np.ndarray:
    """ACT temporal-ensembling weights for n predictions, oldest first: exp(-k*i) normalised."""
    w = np.exp(-k * np.arange(n, dtype=np.float64))
    return w / w.sum()


class ActionPlan:
    """The chunks of one session and the rules that turn them into one action per frame."""

    def __init__(self, config: ExecutionConfig, horizon: int, dim: int) -> None:
        config.validate(horizon, dim)  # also fills the defaults
        self.config = config
        self.horizon = horizon
        self.dim = dim
        self.chunks: list[Chunk] = []  # oldest first
        self._next_id = 0
        self.dropped_stale_actions = 0  # actions whose frame had passed when their chunk arrived

    # ------------------------------------------------------------------ adding chunks
    def add_chunk(
        self,
        actions: np.ndarray,
        obs_frame: int,
        current_frame: int,
        skill_id: int = -1,
        info: dict | None = None,
    ) -> Chunk:
        """Places a chunk planned from ``obs_frame`` that arrived when ``current_frame`` is the next frame to answer.

        With latency compensation the chunk keeps its true frames (actions for frames before
        ``current_frame`` are dropped: they would have been executed late); without it the
        chunk's first action is executed at ``current_frame``, as naive servers do.
        """
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.horizon, self.dim):
            raise ValueError(f"chunk shape {actions.shape} != ({self.horizon}, {self.dim})")
        start = obs_frame if self.config.latency_compensation else max(current_frame, obs_frame)
        length = self.horizon
        if self.config.mode is ExecutionMode.RECEDING_HORIZON:
            length = int(self.config.execute_horizon or self.horizon)
        chunk = Chunk(self._next_id, start, actions, obs_frame, skill_id, start + length, current_frame, dict(info or {}))
        self._next_id += 1
        self.dropped_stale_actions += max(0, min(current_frame, chunk.end_frame) - start)
        if self.chunks and self.config.on_skill_change is SkillChange.FLUSH and skill_id != self.chunks[-1].skill_id:
            self.chunks.clear()
        if self.config.mode is not ExecutionMode.TEMPORAL_ENSEMBLE:
            self.chunks.clear()  # the newest chunk alone defines the plan
        self.chunks.append(chunk)
        self.prune(current_frame)
        return chunk

    def prune(self, frame: int) -> None:
        """Forgets chunks that end before ``frame`` (they can never vote again)."""
        self.chunks = [c for c in self.chunks if c.end_frame > frame]

    # ------------------------------------------------------------------ reading the plan
    def covering(self, frame: int) -> list[Chunk]:
        return [c for c in self.chunks if c.covers(frame)]

    def action_at(self, frame: int) -> tuple[np.ndarray, Chunk] | None:
        """The action for ``frame`` and the newest chunk behind it, or None when nothing covers the frame."""
        chunks = self.covering(frame)
        if not chunks:
            return None
        newest = chunks[-1]
        if self.config.mode is not ExecutionMode.TEMPORAL_ENSEMBLE or len(chunks) == 1:
            return newest.at(frame).copy(), newest
        stacked = np.stack([c.at(frame) for c in chunks]).astype(np.float64)  # [n, D], oldest first
        action = (act_weights(len(chunks), self.config.ensemble_k)[:, None] * stacked).sum(axis=0)
        for d in self.config.newest_wins_dims:
            action[d] = stacked[-1, d]
        return action.astype(np.float32), newest

    def depth_after(self, frame: int) -> int:
        """How many future frames after ``frame`` already have an action."""
        if not self.chunks:
            return 0
        return max(0, max(c.end_frame for c in self.chunks) - 1 - frame)

    def needs_replan(self, frame: int) -> bool:
        return self.depth_after(frame) < int(self.config.replan_threshold or 0)

    def committed(self, start_frame: int, count: int) -> np.ndarray:
        """The plan's actions for frames start_frame .. start_frame+count-1, stopping at the first frame without one.

        These are what the robot will execute while the next chunk is being computed: RTC
        imposes them as the prefix of that chunk.
        """
        out = []
        for f in range(start_frame, start_frame + max(0, count)):
            got = self.action_at(f)
            if got is None:
                break
            out.append(got[0])
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def rtc_delay_frames(self, latency_s: float, control_rate_hz: float, margin_frames: int = 1) -> int:
        """Frames that will execute before a chunk started now arrives (the RTC prefix length)."""
        if self.config.rtc_delay_frames:
            return self.config.rtc_delay_frames
        frames = math.ceil(max(0.0, latency_s) * control_rate_hz) + margin_frames
        return int(min(max(frames, 0), self.horizon - 1))
