"""The policy service without the network: routes, policies, batchers, worker pool, sessions, Describe, Infer.

It knows policies only through the PolicyRuntime boundary (runtime/policies/base.py): one
observation is prepared once by the gate's policy, the skill gate decides the skill and the
route, and the route's policy plans the chunk.

server.py puts gRPC around it; tests and benchmarks can drive it directly. Loading is a
separate step (``load``) so the gRPC server can report NOT_SERVING while engines load and
warm up, and SERVING only after.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from xvla.core.errors import InputError
from xvla.core.tensors import numpy_to_tensor, tensor_to_numpy
from xvla.proto import policy_pb2 as pb
from xvla.runtime.batching import BatchingEngine, Planners
from xvla.runtime.engines.base import Engine
from xvla.runtime.execution import ExecutionConfig
from xvla.runtime.metrics import Metrics
from xvla.runtime.policies import load_policy as load_bundle_policy
from xvla.runtime.policies.base import ObservationInput, PlanContext, PolicyRuntime, Timings
from xvla.runtime.session import PlannedChunk, SessionTarget, resolve_header, stage_timings
from xvla.runtime.skills import RoutingTable, SkillGate
from xvla.runtime.wire import check_observation, decode_cameras

log = logging.getLogger(__name__)

EngineWrapper = Callable[[str, str, Engine], Engine]  # (route, graph, engine) -> engine
PolicyFactory = Callable[[str, Path, "ServiceConfig"], PolicyRuntime]  # (route, bundle dir, config) -> policy


def load_policy(route: str, path: Path, cfg: "ServiceConfig") -> PolicyRuntime:
    """The default factory: a checked bundle of any registered kind, engines from the configured providers."""
    return load_bundle_policy(path, providers=cfg.providers, allow_fallback=cfg.allow_fallback,
                              intra_op_threads=cfg.intra_op_threads, verify=cfg.verify_bundles, seed=cfg.seed,
                              route=route)


@dataclass
class ServiceConfig:
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    allow_fallback: bool = False
    intra_op_threads: int = 0
    batch_window_ms: float = 2.0
    max_batch: int | None = None  # None: the bundle manifest's max_batch
    max_sessions: int = 64  # open streams, counted from the moment a stream opens
    header_timeout_s: float = 10.0  # a stream without its SessionHeader this long is closed (slot freed)
    idle_timeout_s: float = 30.0  # a stream that sends nothing this long is closed (slot freed)
    min_client_ping_interval_s: float = 5.0  # accepted HTTP/2 ping rate; the agent pings every 10 s
    server_keepalive_time_s: float = 30.0  # the server pings idle connections to find dead peers
    bdp_probe: bool = True  # grpc's flow-control window auto-tuning (False: per-stream buffering bounded)
    max_message_bytes: int = 16 * 1024 * 1024
    control_rate_hz: float = 30.0  # used when a session header leaves it 0
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # defaults for header zeros
    warmup: bool = True
    # Batch sizes warmed up at load; None: the bundle's batch list when an engine keeps per-shape state
    # (TensorRT profiles, CUDA graphs, cuDNN plans), batch 1 on CPU-only engines (nothing to prepare).
    warmup_batches: list[int] | None = None
    verify_bundles: bool = True
    seed: int | None = None


class PolicyService:
    def __init__(self, routes: RoutingTable, config: ServiceConfig | None = None, metrics: Metrics | None = None,
                 engine_wrapper: EngineWrapper | None = None, policy_factory: PolicyFactory | None = None) -> None:
        self.routes = routes
        self.policy_factory = policy_factory or load_policy
        self.config = config or ServiceConfig()
        self.metrics = metrics or Metrics()
        self.engine_wrapper = engine_wrapper
        self.policies: dict[str, PolicyRuntime] = {}
        self.planners = Planners()
        self.pool_size = self.config.max_sessions + 4  # a plan in flight per session, and a few Infer calls
        self.pool = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="xvla-plan")
        self.ready = False
        self.sessions = 0
        self.load_ms = 0.0
        self.warmup_ms = 0.0
        self.max_batch: dict[str, int] = {}  # route -> rows per engine call (after clamping)

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Loads every routed bundle, wraps its engines in batchers, checks compatibility, warms up."""
        t0 = time.perf_counter()
        cfg = self.config
        for name, path in self.routes.bundles.items():
            pol = self.policy_factory(name, path, cfg)
            max_batch = cfg.max_batch or pol.bundle.max_batch
            limits = {g: int(e.batch_limit) for g, e in pol.engines.items() if getattr(e, "batch_limit", None)}
            if limits and max_batch > min(limits.values()):
                log.warning("route %s: --max-batch %d exceeds what the engines accept (%s); using %d", name,
                            max_batch, ", ".join(f"{g} <= {n}" for g, n in sorted(limits.items())),
                            min(limits.values()))
                max_batch = min(limits.values())
            self.max_batch[name] = max_batch
            for graph, engine in list(pol.engines.items()):
                if self.engine_wrapper is not None:
                    engine = self.engine_wrapper(name, graph, engine)
                pol.engines[graph] = BatchingEngine(engine, max_batch, cfg.batch_window_ms, self.planners,
                                                    on_batch=self.metrics.observe_batch)
            self.policies[name] = pol
        self._check_compatible()
        if self.gate_policy.spec.skills:
            self.routes.check_skills([str(s["name"]) for s in self.gate_policy.spec.skills])
        self.load_ms = (time.perf_counter() - t0) * 1000.0
        if cfg.warmup:
            t1 = time.perf_counter()
            for name, pol in self.policies.items():
                pol.warmup(batch_sizes=self.warmup_batches(name, pol))
            self.warmup_ms = (time.perf_counter() - t1) * 1000.0
        self._start_pool_threads()
        self.ready = True
        log.info("service ready", extra={"routes": sorted(self.policies), "load_ms": round(self.load_ms, 1),
                                         "warmup_ms": round(self.warmup_ms, 1)})

    def _start_pool_threads(self) -> None:
        """Every plan worker exists before the first session: no thread is started on a tick's path,
        and the thread count stays where it is however many sessions come and go."""
        n = self.pool_size
        gate = threading.Barrier(n)
        for f in [self.pool.submit(gate.wait, 30) for _ in range(n)]:
            f.result()

    def warmup_batches(self, name: str, pol: PolicyRuntime) -> list[int]:
        """The batch sizes warm-up runs for route ``name`` (see ServiceConfig.warmup_batches)."""
        cap = self.max_batch.get(name, pol.bundle.max_batch)
        if self.config.warmup_batches is not None:
            return sorted({b for b in self.config.warmup_batches if 1 <= b <= cap}) or [1]
        stateful = any(getattr(getattr(e, "engine", e), "warms_per_batch", False) for e in pol.engines.values())
        if not stateful:
            return [1]
        return sorted({b for b in pol.bundle.batch_sizes if b <= cap} | {cap})

    def _check_compatible(self) -> None:
        """Routed bundles must agree on everything a session fixes once: action space, horizon, cameras."""
        gate = self.gate_policy.spec
        for name, pol in self.policies.items():
            spec = pol.spec
            for what, a, b in (("policy kind", gate.kind, spec.kind), ("action dim", gate.action_dim, spec.action_dim),
                               ("horizon", gate.horizon, spec.horizon), ("cameras", gate.camera_names, spec.camera_names),
                               ("image size", gate.image_size, spec.image_size),
                               ("proprio dims", gate.proprio_dims, spec.proprio_dims)):
                if a != b:
                    raise ValueError(f"routes: bundle {name!r} has {what} {b}, the gate bundle "
                                     f"{self.routes.gate!r} has {a}; routed bundles must agree")

    @property
    def gate_policy(self) -> PolicyRuntime:
        return self.policies[self.routes.gate]

    def close(self) -> None:
        self.ready = False
        self.pool.shutdown(wait=False, cancel_futures=True)
        for pol in self.policies.values():
            pol.close()

    # ------------------------------------------------------------------ planning (worker threads)
    def plan_chunk(self, target: SessionTarget, gate: SkillGate | None, observation: ObservationInput,
                   committed: np.ndarray | None = None, noise: np.ndarray | None = None) -> PlannedChunk:
        """One chunk: the gate's policy prepares the observation once, the skill decision picks the route
        (before any planning), the route's policy plans with the committed actions as prefix."""
        timings = Timings()
        gate_pol = self.gate_policy
        prepared = gate_pol.prepare(observation, timings)
        with self.planners:
            skill_id, skill, progress, changed = -1, "", math.nan, False
            signals = gate_pol.gate_signals(prepared, timings) if gate_pol.spec.has_skill_head else None
            if target.forced_skill is not None:
                skill_id, skill = target.forced_skill
                if signals is not None and signals.progress is not None:
                    progress = float(signals.progress[skill_id])
            elif signals is not None:
                if gate is not None:
                    d = gate.update(signals.skill_logits, signals.progress)
                    skill_id, skill, progress, changed = d.skill_id, d.name, d.progress, d.changed
                else:  # unary Infer: no history, the classifier's argmax (what the PyTorch model does)
                    skill_id = int(np.argmax(signals.skill_logits))
                    skill = next((str(s["name"]) for s in gate_pol.spec.skills if int(s["id"]) == skill_id), "")
                    if signals.progress is not None:
                        progress = float(signals.progress[skill_id])
            route = target.forced_route or self.routes.route_for(skill or None)
            context = PlanContext(domain_id=target.domain_id, task_id=target.task_id,
                                  skill_id=skill_id if skill_id >= 0 else None, steps=target.steps, noise=noise,
                                  committed=committed, max_new_tokens=target.max_new_tokens)
            chunk = self.policies[route].plan(prepared, context, timings)
        return PlannedChunk(chunk.actions, skill_id, skill, progress, route, timings.as_dict(), changed, chunk.text)

    # ------------------------------------------------------------------ unary RPCs
    def infer(self, request: pb.InferRequest) -> pb.InferResponse:
        """One observation -> one whole chunk (worker thread). Stateless: no gating history."""
        target = resolve_header(self, request.session, field="session")
        spec = self.gate_policy.spec
        proprio = check_observation(request.observation, spec)
        noise = None
        if request.HasField("noise"):
            noise = tensor_to_numpy(request.noise, "noise", (pb.FLOAT32,)).astype(np.float32)
            want = spec.noise_shape
            if want is None:
                raise InputError("noise", f"policy kind {spec.kind!r} takes no injected noise")
            if noise.shape not in (want, (1, *want)):
                raise InputError("noise.shape", f"expected {list(want)}, got {list(noise.shape)}")
            if not np.all(np.isfinite(noise)):
                raise InputError("noise", "contains NaN or Inf")
            noise = noise.reshape(want)
        instruction = request.observation.instruction or target.instruction
        observation = ObservationInput(decode_cameras(request.observation), proprio, instruction)
        planned = self.plan_chunk(target, None, observation, noise=noise)
        self.metrics.observe_chunk(planned.route, planned.timings)
        return pb.InferResponse(
            actions=numpy_to_tensor(planned.actions), skill=planned.skill, skill_id=planned.skill_id,
            progress=planned.progress, route=planned.route, timings=stage_timings(planned.timings),
            text=planned.text)

    def describe(self) -> pb.DescribeResponse:
        spec = self.gate_policy.spec
        resp = pb.DescribeResponse(
            policy_kind=spec.kind,
            action_space=pb.ActionSpaceSpec(
                mode=spec.mode, dim=spec.action_dim, idx_for_delta=list(spec.idx_for_delta),
                gripper_dims=list(spec.gripper_dims), names=list(spec.action_names),
                accepted_proprio_dims=list(spec.proprio_dims)),
            horizon=spec.horizon, control_rate_hz=self.config.control_rate_hz,
            model_name=spec.name, max_message_bytes=self.config.max_message_bytes)
        h, w = spec.image_size
        for name in spec.camera_names:
            resp.cameras.add(name=name, height=h, width=w, needs_pose=spec.needs_pose)
        for s in spec.skills:
            resp.skills.add(id=int(s["id"]), name=str(s["name"]))
        for t in spec.tasks:
            resp.tasks.add(id=int(t["id"]), name=str(t["name"]))
        for route, pol in self.policies.items():
            for graph, eng in pol.engines.items():
                info = eng.info
                resp.engines.add(graph=graph, backend=info.backend, provider=info.provider, precision=info.precision,
                                 max_batch=getattr(eng, "max_batch", info.max_batch), route=route)
        return resp
