"""The policy-kind boundary: what the session, the service and the server need from a policy family.

A kind (X-VLA, a diffusion VLA, a test's toy) implements :class:`PolicyRuntime` and registers it under its
manifest ``policy_kind`` (``xvla.runtime.policies.register``). Everything outside ``policies/<kind>/``
sees only these types: a :class:`PolicySpec` (what a session fixes once), an :class:`ObservationInput`
(checked and decoded once by the session), an opaque prepared observation, optional
:class:`GateSignals` for skill gating, a :class:`PlanContext` in and a :class:`Chunk` out.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from xvla.core.images import CameraInput
from xvla.runtime.bundle import Bundle
from xvla.runtime.engines.base import Engine, StaticInputs


@dataclass(frozen=True)
class PolicySpec:
    """What a bundle's policy accepts and returns: the facts a session and the wire contract fix once."""

    kind: str
    name: str
    action_dim: int
    horizon: int
    camera_names: tuple[str, ...]
    image_size: tuple[int, int]  # the model's input size (H, W); robots may send any size
    proprio_dims: tuple[int, ...]  # accepted proprio lengths (e.g. a state and a robot's raw proprio)
    needs_pose: bool = False
    action_names: tuple[str, ...] = ()
    gripper_dims: tuple[int, ...] = ()  # never blended across chunks (newest wins)
    skills: tuple[dict, ...] = ()  # [{"id", "name"}]
    tasks: tuple[dict, ...] = ()
    needs_task: bool = False  # a task id is required (task prompts)
    takes_skill: bool = False  # the skill id conditions the actions (skill prompts)
    has_skill_head: bool = False  # GateSignals come from the model
    num_domains: int = 1
    default_domain: int = 0
    default_steps: int = 10  # denoising / diffusion steps per chunk
    noise_shape: tuple[int, ...] | None = None  # per-sample initial noise a client may inject (Infer)
    supports_prefix: bool = False  # real-time chunking (committed prefix imposed while sampling)
    max_batch: int = 1
    mode: str = ""  # an action-space label for Describe (ee6d, joint, auto, ...)
    idx_for_delta: tuple[int, ...] = ()


@dataclass
class ObservationInput:
    """One observation after the session's cheap checks: decoded cameras, proprio, the instruction."""

    cameras: dict[str, CameraInput]
    proprio: np.ndarray  # 1-D float32, one of PolicySpec.proprio_dims
    instruction: str = ""


@dataclass
class GateSignals:
    """A skill classifier's view of one observation (batch of one)."""

    skill_logits: np.ndarray  # [S]
    progress: np.ndarray | None = None  # [S] in [0, 1]


@dataclass
class PlanContext:
    """What one chunk is asked for, after header validation and the route/skill decision."""

    domain_id: int = 0
    task_id: int | None = None
    skill_id: int | None = None  # the gate's decision (-1/None: the policy decides)
    steps: int = 10
    noise: np.ndarray | None = None  # PolicySpec.noise_shape, injected for reproducibility
    committed: np.ndarray | None = None  # [P, D] actions already promised to the robot (RTC prefix)
    max_new_tokens: int | None = None  # for kinds that generate text


@dataclass
class Timings:
    """Milliseconds per stage of one chunk; ``queue_wait`` is time in batchers (window + busy engine)."""

    stages: dict[str, float] = field(default_factory=dict)
    queue_wait: float = 0.0
    batch_size: int = 1

    def add(self, stage: str, ms: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + ms

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1000.0)

    @property
    def total(self) -> float:
        return float(sum(self.stages.values()))

    def as_dict(self) -> dict[str, float]:
        return {**self.stages, "queue_wait": self.queue_wait, "total": self.total, "batch_size": float(self.batch_size)}


@dataclass
class Chunk:
    """One planned chunk: actions in the robot's space and what came with them."""

    actions: np.ndarray  # [T, D] float32
    timings: Timings = field(default_factory=Timings)
    skill_id: int = -1
    skill: str = ""
    progress: float = float("nan")
    text: str = ""  # generated text (e.g. a reasoning VLA's sub-step)
    aux: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PolicyRuntime(Protocol):
    """A policy family behind one small interface (see docs/architecture.md, "Adding a policy kind")."""

    bundle: Bundle
    engines: dict[str, Engine]  # graph name -> engine; the service wraps each in a batcher
    route: str

    @classmethod
    def from_bundle(cls, bundle: Bundle, engines: Mapping[str, Engine], *, seed: int | None = None,
                    route: str = "") -> "PolicyRuntime": ...

    @property
    def spec(self) -> PolicySpec: ...

    def prepare(self, observation: ObservationInput, timings: Timings, field: str = "observation") -> Any:
        """Model inputs for one observation (validated here, once); opaque to the caller."""

    def gate_signals(self, prepared: Any, timings: Timings) -> GateSignals | None:
        """Skill-classifier outputs for a prepared observation, or None for a kind without one."""

    def plan(self, prepared: Any, context: PlanContext, timings: Timings) -> Chunk:
        """One chunk from a prepared observation (which another route's policy of the same contract may have prepared)."""

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float: ...

    def close(self) -> None: ...


def run_engine(engine: Engine, feeds: Mapping[str, np.ndarray], timings: Timings,
               static: StaticInputs | None = None) -> dict[str, np.ndarray]:
    """Runs an engine, booking batcher waits as queue_wait (BatchingEngine reports them).

    ``static`` (from ``engine.bind_static``) carries the inputs that do not change between calls.
    """
    if static is not None:
        with_stats = getattr(engine, "run_bound_with_stats", None)
        if with_stats is None:
            return engine.run_bound(static, feeds)
        out, stats = with_stats(static, feeds)
    else:
        with_stats = getattr(engine, "run_with_stats", None)
        if with_stats is None:
            return engine.run(feeds)
        out, stats = with_stats(feeds)
    timings.queue_wait += stats.wait_ms
    timings.batch_size = max(timings.batch_size, stats.batch_size)
    return out
