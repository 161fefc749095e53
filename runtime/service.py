"""The policy service without the network: routes, policies, batchers, worker pool, sessions, Describe, Infer.

server.py puts gRPC around it; tests and benchmarks can drive it directly. Loading is a
separate step (``load``) so the gRPC server can report NOT_SERVING while engines load and
warm up, and SERVING only after.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from xvla.proto import policy_pb2 as pb
from xvla.runtime.batching import BatchingEngine, Planners
from xvla.runtime.engines.base import Engine
from xvla.runtime.execution import ExecutionConfig
from xvla.runtime.inverse_postprocess import unpostprocess_actions
from xvla.runtime.metrics import Metrics
from xvla.runtime.policy import Policy, Timings
from xvla.runtime.preprocess import CameraInput, InputError
from xvla.runtime.session import PlannedChunk, SessionTarget, resolve_header
from xvla.runtime.skills import RoutingTable, SkillGate
from xvla.runtime.wire import check_observation, decode_cameras, numpy_to_tensor, tensor_to_numpy

log = logging.getLogger(__name__)

EngineWrapper = Callable[[str, str, Engine], Engine]  # (route, graph, engine) -> engine
PolicyFactory = Callable[[str, Path, "ServiceConfig"], Policy]  # (route, bundle dir, config) -> policy


def load_policy(route: str, path: Path, cfg: "ServiceConfig") -> Policy:
    """The default factory: a checked bundle with engines from the configured providers."""
    return Policy.load(path, providers=cfg.providers, allow_fallback=cfg.allow_fallback,
                       intra_op_threads=cfg.intra_op_threads, verify=cfg.verify_bundles, seed=cfg.seed, route=route)


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
        self.policies: dict[str, Policy] = {}
        self.planners = Planners()
        self.pool = ThreadPoolExecutor(max_workers=self.config.max_sessions + 4, thread_name_prefix="xvla-plan")
        self.ready = False
        self.sessions = 0
        self.load_ms = 0.0
        self.warmup_ms = 0.0

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Loads every routed bundle, wraps its engines in batchers, checks compatibility, warms up."""
        t0 = time.perf_counter()
        cfg = self.config
        for name, path in self.routes.bundles.items():
            pol = self.policy_factory(name, path, cfg)
            max_batch = cfg.max_batch or pol.bundle.max_batch
            for graph, engine in list(pol.engines.items()):
                if self.engine_wrapper is not None:
                    engine = self.engine_wrapper(name, graph, engine)
                pol.engines[graph] = BatchingEngine(engine, max_batch, cfg.batch_window_ms, self.planners,
                                                    on_batch=self.metrics.observe_batch)
            self.policies[name] = pol
        self._check_compatible()
        if self.gate_policy.bundle.skills:
            self.routes.check_skills([str(s["name"]) for s in self.gate_policy.bundle.skills])
        self.load_ms = (time.perf_counter() - t0) * 1000.0
        if cfg.warmup:
            t1 = time.perf_counter()
            for pol in self.policies.values():
                pol.warmup()
            self.warmup_ms = (time.perf_counter() - t1) * 1000.0
        self.ready = True
        log.info("service ready", extra={"routes": sorted(self.policies), "load_ms": round(self.load_ms, 1),
                                         "warmup_ms": round(self.warmup_ms, 1)})

    def _check_compatible(self) -> None:
        """Routed bundles must agree on everything a session fixes once: action space, horizon, cameras."""
        gate = self.gate_policy
        for name, pol in self.policies.items():
            for what, a, b in (("action dim", gate.dim, pol.dim), ("horizon", gate.horizon, pol.horizon),
                               ("cameras", gate.images.camera_names, pol.images.camera_names),
                               ("image size", gate.images.size, pol.images.size),
                               ("proprio dims", gate.proprio.accepted_dims, pol.proprio.accepted_dims)):
                if a != b:
                    raise ValueError(f"routes: bundle {name!r} has {what} {b}, the gate bundle "
                                     f"{self.routes.gate!r} has {a}; routed bundles must agree")

    @property
    def gate_policy(self) -> Policy:
        return self.policies[self.routes.gate]

    def close(self) -> None:
        self.ready = False
        self.pool.shutdown(wait=False, cancel_futures=True)
        for pol in self.policies.values():
            pol.close()

    # ------------------------------------------------------------------ planning (worker threads)
    def plan_chunk(self, target: SessionTarget, gate: SkillGate | None, cameras: Mapping[str, CameraInput],
                   proprio: np.ndarray, instruction: str, committed: np.ndarray | None = None,
                   noise: np.ndarray | None = None) -> PlannedChunk:
        """One chunk: preprocess, gate VLM, skill decision, route, (route VLM), denoise (RTC prefix)."""
        timings = Timings()
        gate_pol = self.gate_policy
        prepared = gate_pol.prepare(dict(cameras), proprio, instruction)
        timings.preprocess = prepared.preprocess_ms
        with self.planners:
            enc = gate_pol.encode(prepared.input_ids, prepared.image_input, prepared.image_mask,
                                  prepared.extrinsics, prepared.intrinsics, timings)
            skill_id, skill, progress, changed = -1, "", math.nan, False
            if target.forced_skill is not None:
                skill_id, skill = target.forced_skill
                if enc.progress is not None:
                    progress = float(enc.progress[0, skill_id])
            elif enc.skill_logits is not None:
                if gate is not None:
                    d = gate.update(enc.skill_logits[0], None if enc.progress is None else enc.progress[0])
                    skill_id, skill, progress, changed = d.skill_id, d.name, d.progress, d.changed
                else:  # unary Infer: no history, the classifier's argmax (what the PyTorch model does)
                    skill_id = int(np.argmax(enc.skill_logits[0]))
                    skill = next((str(s["name"]) for s in gate_pol.bundle.skills if int(s["id"]) == skill_id), "")
                    if enc.progress is not None:
                        progress = float(enc.progress[0, skill_id])
            route = target.forced_route or self.routes.route_for(skill or None)
            pol = self.policies[route]
            if pol is not gate_pol:
                enc = pol.encode(pol.tokenize(instruction)[None], prepared.image_input, prepared.image_mask,
                                 prepared.extrinsics, prepared.intrinsics, timings)
            prefix = None
            if committed is not None and len(committed):
                prefix = unpostprocess_actions(committed[None], prepared.proprio, pol.bundle.action_space)
            actions, _raw = pol.denoise(
                enc, prepared.proprio, np.array([target.domain_id], np.int64), target.steps, noise=noise,
                task_id=None if target.task_id is None else np.array([target.task_id], np.int64),
                skill_id=np.array([skill_id], np.int64) if (skill_id >= 0 and pol.takes_skill) else None,
                prefix=prefix, timings=timings)
        return PlannedChunk(actions[0], skill_id, skill, progress, route, timings.as_dict(), changed)

    # ------------------------------------------------------------------ unary RPCs
    def infer(self, request: pb.InferRequest) -> pb.InferResponse:
        """One observation -> one whole chunk (worker thread). Stateless: no gating history."""
        target = resolve_header(self, request.session, field="session")
        gate = self.gate_policy
        proprio = check_observation(request.observation, gate.images.camera_names, gate.proprio.accepted_dims,
                                    gate.needs_pose)
        noise = None
        if request.HasField("noise"):
            noise = tensor_to_numpy(request.noise, "noise", (pb.FLOAT32,)).astype(np.float32)
            want = (gate.horizon, gate.model_dim)
            if noise.shape not in (want, (1, *want)):
                raise InputError("noise.shape", f"expected {list(want)}, got {list(noise.shape)}")
            if not np.all(np.isfinite(noise)):
                raise InputError("noise", "contains NaN or Inf")
            noise = noise.reshape(1, *want)
        instruction = request.observation.instruction or target.instruction
        planned = self.plan_chunk(target, None, decode_cameras(request.observation), proprio, instruction, noise=noise)
        self.metrics.observe_chunk(planned.route, planned.timings)
        t = planned.timings
        return pb.InferResponse(
            actions=numpy_to_tensor(planned.actions), skill=planned.skill, skill_id=planned.skill_id,
            progress=planned.progress, route=planned.route,
            timings=pb.StageTimings(preprocess_ms=t["preprocess"], vlm_ms=t["vlm"], geometry_ms=t["geometry"],
                                    denoise_ms=t["denoise"], decode_ms=t["decode"], queue_wait_ms=t["queue_wait"],
                                    total_ms=t["total"], batch_size=int(t["batch_size"])))

    def describe(self) -> pb.DescribeResponse:
        gate = self.gate_policy
        b = gate.bundle
        space = b.action_space
        resp = pb.DescribeResponse(
            policy_kind=str(b.manifest.get("policy_kind", "xvla")),
            action_space=pb.ActionSpaceSpec(
                mode=str(space.get("mode", "")), dim=b.dim,
                idx_for_delta=[int(i) for i in space.get("idx_for_delta", [])],
                gripper_dims=[int(i) for i in space.get("gripper_dims", []) if int(i) < b.dim],
                names=[str(n) for n in space.get("names", []) or []],
                accepted_proprio_dims=gate.proprio.accepted_dims),
            horizon=b.horizon, control_rate_hz=self.config.control_rate_hz,
            model_name=b.name, max_message_bytes=self.config.max_message_bytes)
        h, w = gate.images.size
        for name in gate.images.camera_names:
            resp.cameras.add(name=name, height=h, width=w, needs_pose=gate.needs_pose)
        for s in b.skills:
            resp.skills.add(id=int(s["id"]), name=str(s["name"]))
        for t in b.tasks:
            resp.tasks.add(id=int(t["id"]), name=str(t["name"]))
        for route, pol in self.policies.items():
            for graph, eng in pol.engines.items():
                info = eng.info
                resp.engines.add(graph=graph, backend=info.backend, provider=info.provider, precision=info.precision,
                                 max_batch=getattr(eng, "max_batch", info.max_batch), route=route)
        return resp
