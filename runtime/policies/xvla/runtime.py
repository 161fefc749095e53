"""X-VLA behind the policy-kind boundary, and its offline Python API (``generate_actions`` / ``act``).

``generate_actions`` takes exactly the PyTorch model's arguments (numpy in, numpy out) so a
notebook written against the PyTorch model runs unchanged on exported engines. ``act`` takes
a raw robot observation and does the bundle's preprocessing first.

The service uses the PolicyRuntime side: ``prepare`` (preprocessing by the bundle's contract),
``gate_signals`` (the VLM's skill head, computed once and kept with the prepared observation),
``plan`` (the flow-matching loop on the action graph, with the committed actions as an RTC
prefix, mapped back into model space here). ``encode`` and ``denoise`` are the two stages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from xvla.core.errors import InputError
from xvla.core.flow_matching import flow_matching_chunk, postprocess_actions, unpostprocess_actions
from xvla.core.images import CameraInput
from xvla.runtime.bundle import Bundle
from xvla.runtime.engines.base import Engine
from xvla.runtime.policies.base import (
    Chunk,
    GateSignals,
    ObservationInput,
    PlanContext,
    PolicySpec,
    Timings,
    run_engine,
)
from xvla.runtime.policies.xvla.preprocess import ImagePreprocessor, InstructionTokenizer, ProprioPreprocessor
from xvla.runtime.wire import check_input

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Per-chunk conditioning: the VLM (and geometry) outputs plus the skill heads, batch-first."""

    features: dict[str, np.ndarray]  # vlm_features, aux_visual_inputs (+ geometry_tokens)
    skill_logits: np.ndarray | None = None  # [B, S]
    progress: np.ndarray | None = None  # [B, S] in [0, 1]


@dataclass
class PreparedObservation:
    """One observation turned into model inputs (batch of one)."""

    input_ids: np.ndarray  # [1, L] int64
    image_input: np.ndarray  # [1, V, 3, H, W] float32
    image_mask: np.ndarray  # [1, V] bool
    proprio: np.ndarray  # [1, D] float32 (the bundle's proprio dim)
    extrinsics: np.ndarray | None = None  # [1, V, 4, 4]
    intrinsics: np.ndarray | None = None  # [1, V, 3, 3]
    preprocess_ms: float = 0.0
    instruction: str = ""
    tokenized_by: str = ""  # the route whose tokenizer made input_ids
    encoded: dict[str, Encoded] = field(default_factory=dict)  # route -> its VLM outputs for this observation


@dataclass
class Observation:
    """A raw robot observation for ``XVLAPolicy.act``.

    images: camera name -> HxWx3 uint8 RGB at any size; proprio: the bundle's dim (23 for
    R1Pro) or the raw 256-d ``robot_r1::proprio``; poses only for geometry bundles.
    """

    images: Mapping[str, np.ndarray]
    proprio: np.ndarray
    instruction: str = ""
    extrinsics: Mapping[str, np.ndarray] | None = None
    intrinsics: Mapping[str, np.ndarray] | None = None
    domain_id: int | None = None
    task_id: int | None = None
    skill_id: int | None = None


class XVLAPolicy:
    """One X-VLA bundle's engines and preprocessing (PolicyRuntime of kind ``xvla``)."""

    kind = "xvla"

    def __init__(self, bundle: Bundle, engines: Mapping[str, Engine], seed: int | None = None, route: str = "") -> None:
        self.bundle = bundle
        self.engines = dict(engines)
        self.route = route or bundle.name
        pol = bundle.policy
        self.space: dict[str, Any] = pol["action_space"]
        pre: dict[str, Any] = pol["preprocess"]
        self.preprocess_spec = pre
        for g in ("vlm", "action") + (("geometry",) if "geometry" in bundle.graphs else ()):
            if g not in self.engines:
                raise ValueError(f"an X-VLA policy needs an engine for graph {g!r}")
        self.images = ImagePreprocessor(pre)
        self.proprio = ProprioPreprocessor(pre.get("proprio"), bundle.dim)
        tok_dir = bundle.root / "tokenizer"
        self.tokenizer = (
            InstructionTokenizer(tok_dir, int(pre.get("max_text_len", 50)), pre.get("pad_token_id"))
            if tok_dir.is_dir() else None
        )
        self.rng = np.random.default_rng(seed)
        self._action_inputs = set(self.engines["action"].input_names)
        chunk = bundle.graphs.get("chunk") or {}
        steps = getattr(self.engines.get("chunk"), "steps", None) or chunk.get("steps")
        self._unrolled_steps = int(steps) if "chunk" in self.engines and steps else None
        self._vlm_outputs = set(self.engines["vlm"].output_names)
        self._spec = self._build_spec()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bundle(cls, bundle: Bundle, engines: Mapping[str, Engine], *, seed: int | None = None,
                    route: str = "") -> "XVLAPolicy":
        return cls(bundle, engines, seed=seed, route=route)

    @staticmethod
    def torch_engines(bundle: Bundle, flag: str, route: str = "") -> dict[str, Engine]:
        """``--providers torch-cpu|torch-cuda[-bf16|-fp16|-fp32]``: the exported graphs' PyTorch modules."""
        from xvla.runtime.policies.xvla.torch_engine import create_torch_engines

        return dict(create_torch_engines(bundle, flag, route=route))

    @classmethod
    def load(cls, bundle_dir: Any, providers: Sequence[str] = ("cpu",), allow_fallback: bool = False,
             intra_op_threads: int = 0, verify: bool = True, seed: int | None = None, route: str = "") -> "XVLAPolicy":
        """Loads and checks an X-VLA bundle and creates its engines (see xvla.runtime.policies.load_policy)."""
        from xvla.runtime.policies import load_policy

        pol = load_policy(bundle_dir, providers, allow_fallback, intra_op_threads, verify, seed, route)
        if not isinstance(pol, cls):
            raise TypeError(f"{bundle_dir} is a {pol.bundle.kind!r} bundle, not an X-VLA one")
        return pol

    def close(self) -> None:
        for e in self.engines.values():
            e.close()

    def _build_spec(self) -> PolicySpec:
        b, pol = self.bundle, self.bundle.policy
        return PolicySpec(
            kind=self.kind, name=b.name, action_dim=b.dim, horizon=b.horizon,
            camera_names=tuple(self.images.camera_names), image_size=self.images.size,
            proprio_dims=tuple(self.proprio.accepted_dims), needs_pose=self.needs_pose,
            action_names=b.action_names, gripper_dims=b.gripper_dims,
            skills=tuple(b.skills), tasks=tuple(b.tasks),
            needs_task=self.needs_task, takes_skill=self.takes_skill, has_skill_head=self.has_skill_head,
            num_domains=int(pol.get("model_config", {}).get("num_domains", 30)),
            default_domain=int((pol.get("domains") or {}).get("default", 0)),
            default_steps=int(pol.get("denoising", {}).get("default_steps", 10)),
            noise_shape=(b.horizon, self.model_dim), supports_prefix=True, max_batch=b.max_batch,
            mode=str(self.space.get("mode", "")),
            idx_for_delta=tuple(int(i) for i in self.space.get("idx_for_delta", [])),
        )

    # ------------------------------------------------------------------ properties
    @property
    def spec(self) -> PolicySpec:
        return self._spec

    @property
    def horizon(self) -> int:
        return self.bundle.horizon

    @property
    def dim(self) -> int:
        return self.bundle.dim

    @property
    def model_dim(self) -> int:
        return int(self.space.get("model_dim", self.dim))

    @property
    def default_steps(self) -> int:
        return int(self.bundle.policy.get("denoising", {}).get("default_steps", 10))

    @property
    def has_skill_head(self) -> bool:
        return "skill_logits" in self._vlm_outputs

    @property
    def needs_task(self) -> bool:
        return "task_id" in self._action_inputs

    @property
    def takes_skill(self) -> bool:
        return "skill_id" in self._action_inputs

    @property
    def needs_pose(self) -> bool:
        return "geometry" in self.engines

    # ------------------------------------------------------------------ the two stages
    def encode(
        self,
        input_ids: np.ndarray,
        image_input: np.ndarray,
        image_mask: np.ndarray,
        extrinsics: np.ndarray | None = None,
        intrinsics: np.ndarray | None = None,
        timings: Timings | None = None,
    ) -> Encoded:
        """VLM (+ geometry) once per chunk."""
        timings = timings if timings is not None else Timings()
        with timings.stage("vlm"):
            out = run_engine(self.engines["vlm"], {
                "input_ids": np.asarray(input_ids, np.int64),
                "image_input": np.asarray(image_input, np.float32),
                "image_mask": np.asarray(image_mask, bool),
            }, timings)
        features = {k: v for k, v in out.items() if k in ("vlm_features", "aux_visual_inputs")}
        if self.needs_pose:
            if extrinsics is None or intrinsics is None:
                raise InputError("extrinsics/intrinsics", "this policy has a geometry encoder: camera poses are required")
            with timings.stage("geometry"):
                geo = run_engine(self.engines["geometry"], {
                    "image_input": np.asarray(image_input, np.float32),
                    "extrinsics": np.asarray(extrinsics, np.float32),
                    "intrinsics": np.asarray(intrinsics, np.float32),
                }, timings)
            features["geometry_tokens"] = geo["geometry_tokens"]
        return Encoded(features, out.get("skill_logits"), out.get("progress"))

    def denoise(
        self,
        encoded: Encoded,
        proprio: np.ndarray,
        domain_id: np.ndarray,
        steps: int = 10,
        noise: np.ndarray | None = None,
        task_id: np.ndarray | None = None,
        skill_id: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        timings: Timings | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The flow-matching loop on the action graph -> (actions [B, T, D] postprocessed, raw [B, T, Dm]).

        ``prefix`` [B, P, Dm] (raw model space) is imposed on the denoising state at every
        step (real-time chunking); see xvla.runtime.policies.xvla.flow_matching.
        """
        timings = timings if timings is not None else Timings()
        proprio = np.asarray(proprio, np.float32)
        b, dm, t_len = proprio.shape[0], self.model_dim, self.horizon
        if proprio.ndim != 2 or proprio.shape[1] not in (self.dim, dm):
            raise InputError("proprio", f"expected [B, {self.dim}] or [B, {dm}], got {list(proprio.shape)}")
        proprio_m = np.zeros((b, dm), np.float32)
        proprio_m[:, : proprio.shape[1]] = proprio
        if noise is None:
            noise = self.rng.standard_normal((b, t_len, dm), dtype=np.float32)
        noise = np.asarray(noise, np.float32)
        if noise.shape != (b, t_len, dm):
            raise InputError("noise", f"expected shape {[b, t_len, dm]}, got {list(noise.shape)}")
        feeds: dict[str, np.ndarray] = {
            "proprio": proprio_m,
            "domain_id": np.asarray(domain_id, np.int64).reshape(b),
            **encoded.features,
        }
        if self.needs_task:
            if task_id is None:
                raise InputError("task_id", "this policy has task prompts: a task id is required")
            feeds["task_id"] = np.asarray(task_id, np.int64).reshape(b)
        if self.takes_skill:
            if skill_id is None:
                if encoded.skill_logits is None:
                    raise InputError("skill_id", "this policy has skill prompts but no skill classifier: pass skill_id")
                skill_id = np.argmax(encoded.skill_logits, axis=-1)
            feeds["skill_id"] = np.asarray(skill_id, np.int64).reshape(b)
        action_engine = self.engines["action"]

        p_len = 0 if prefix is None else int(prefix.shape[1])
        with timings.stage("denoise"):
            if not p_len and self._unrolled_steps == int(steps):
                # the whole loop as one graph (exported with --unrolled): one engine call instead of N
                feeds["x1"] = noise
                raw = run_engine(self.engines["chunk"], feeds, timings)["action"]
            else:
                # The conditioning (VLM features, proprio, ids) is the same for every step: bound once per
                # chunk, so a GPU engine uploads it once and each step only sends x_t and t.
                binder = getattr(action_engine, "bind_static", None)
                static = binder(feeds) if binder is not None else None

                def step(x_t: np.ndarray, t: np.ndarray) -> np.ndarray:  # t: [B] float32
                    if static is None:
                        return run_engine(action_engine, {**feeds, "x_t": x_t, "t": t}, timings)["action"]
                    return run_engine(action_engine, {"x_t": x_t, "t": t}, timings, static)["action"]

                raw = flow_matching_chunk(step, noise, int(steps), prefix=prefix if p_len else None, prefix_len=p_len)
        with timings.stage("decode"):
            actions = postprocess_actions(raw, proprio_m, self.space)
        return np.asarray(actions, np.float32), np.asarray(raw, np.float32)

    # ------------------------------------------------------------------ PolicyRuntime
    def prepare(self, observation: ObservationInput, timings: Timings, field: str = "observation") -> PreparedObservation:
        """Preprocessing by the bundle's contract (resize, normalise, view order, intrinsics, proprio, tokens).

        The observation was validated against ``spec`` by whoever built it (runtime.wire)."""
        with timings.stage("preprocess"):
            v = self.images.num_views
            imgs = self.images(observation.cameras)
            state = self.proprio(observation.proprio)
            ids = self.tokenize(observation.instruction)
            return PreparedObservation(
                input_ids=ids[None], image_input=imgs.image_input[None], image_mask=imgs.image_mask[None],
                proprio=state[None],
                extrinsics=imgs.extrinsics.reshape(1, v, 4, 4) if self.needs_pose else None,
                intrinsics=imgs.intrinsics.reshape(1, v, 3, 3) if self.needs_pose else None,
                instruction=observation.instruction, tokenized_by=self.route,
            )

    def _encoded(self, prepared: PreparedObservation, timings: Timings) -> Encoded:
        """This route's VLM outputs for a prepared observation (the gate's may have prepared it)."""
        enc = prepared.encoded.get(self.route)
        if enc is None:
            ids = prepared.input_ids if prepared.tokenized_by == self.route else self.tokenize(prepared.instruction)[None]
            enc = self.encode(ids, prepared.image_input, prepared.image_mask, prepared.extrinsics,
                              prepared.intrinsics, timings)
            prepared.encoded[self.route] = enc
        return enc

    def gate_signals(self, prepared: PreparedObservation, timings: Timings) -> GateSignals | None:
        enc = self._encoded(prepared, timings)
        if enc.skill_logits is None:
            return None
        return GateSignals(enc.skill_logits[0], None if enc.progress is None else enc.progress[0])

    def plan(self, prepared: PreparedObservation, context: PlanContext, timings: Timings) -> Chunk:
        enc = self._encoded(prepared, timings)
        prefix = None
        if context.committed is not None and len(context.committed):
            # the robot-space actions already promised -> the raw model space the sampler works in
            prefix = unpostprocess_actions(context.committed[None], prepared.proprio, self.space)
        noise = None if context.noise is None else np.asarray(context.noise, np.float32).reshape(
            1, self.horizon, self.model_dim)
        skill = context.skill_id if (context.skill_id is not None and context.skill_id >= 0 and self.takes_skill) else None
        actions, _raw = self.denoise(
            enc, prepared.proprio, np.array([context.domain_id], np.int64), context.steps, noise=noise,
            task_id=None if context.task_id is None else np.array([context.task_id], np.int64),
            skill_id=None if skill is None else np.array([skill], np.int64), prefix=prefix, timings=timings)
        return Chunk(actions=actions[0], timings=timings)

    # ------------------------------------------------------------------ the model's API
    def generate_actions(
        self,
        input_ids: np.ndarray,
        image_input: np.ndarray,
        image_mask: np.ndarray,
        domain_id: np.ndarray,
        proprio: np.ndarray,
        steps: int = 10,
        noise: np.ndarray | None = None,
        task_id: np.ndarray | None = None,
        skill_id: np.ndarray | None = None,
        extrinsics: np.ndarray | None = None,
        intrinsics: np.ndarray | None = None,
        return_aux: bool = False,
    ) -> np.ndarray | dict[str, Any]:
        """One chunk [B, T, D], as the PyTorch model's ``generate_actions`` (same arguments, numpy arrays).

        ``return_aux=True`` returns {"actions", "skill_logits", "skill_id", "progress" (of the
        chosen skill, [B]), "timings"}.
        """
        timings = Timings()
        enc = self.encode(input_ids, image_input, image_mask, extrinsics, intrinsics, timings)
        if self.takes_skill and skill_id is None and enc.skill_logits is not None:
            skill_id = np.argmax(enc.skill_logits, axis=-1)
        actions, _ = self.denoise(enc, proprio, domain_id, steps, noise, task_id, skill_id, timings=timings)
        if not return_aux:
            return actions
        progress = None
        if enc.progress is not None and skill_id is not None:
            progress = np.take_along_axis(enc.progress, np.asarray(skill_id, np.int64).reshape(-1, 1), axis=1)[:, 0]
        return {"actions": actions, "skill_logits": enc.skill_logits, "skill_id": skill_id,
                "progress": progress, "timings": timings.as_dict()}

    def tokenize(self, instruction: str) -> np.ndarray:
        if self.tokenizer is None:
            raise InputError("instruction", f"bundle {self.bundle.root} ships no tokenizer/ folder")
        return self.tokenizer(instruction)

    def act(self, observation: Observation | Mapping[str, Any], steps: int | None = None,
            noise: np.ndarray | None = None, return_aux: bool = False) -> np.ndarray | dict[str, Any]:
        """A raw observation -> one chunk [T, D] (the robot's actions for the next T frames)."""
        obs = observation if isinstance(observation, Observation) else Observation(**dict(observation))
        cameras = {
            name: CameraInput(
                np.asarray(img),
                None if obs.extrinsics is None else obs.extrinsics.get(name),
                None if obs.intrinsics is None else obs.intrinsics.get(name),
            )
            for name, img in obs.images.items()
        }
        t_pre = Timings()
        checked = check_input(ObservationInput(cameras, np.asarray(obs.proprio), obs.instruction), self.spec)
        prepared = self.prepare(checked, t_pre)
        domain = obs.domain_id if obs.domain_id is not None else self.spec.default_domain
        out = self.generate_actions(
            prepared.input_ids, prepared.image_input, prepared.image_mask, np.array([domain], np.int64),
            prepared.proprio, steps=steps or self.default_steps,
            noise=None if noise is None else np.asarray(noise, np.float32).reshape(1, self.horizon, self.model_dim),
            task_id=None if obs.task_id is None else np.array([obs.task_id], np.int64),
            skill_id=None if obs.skill_id is None else np.array([obs.skill_id], np.int64),
            extrinsics=prepared.extrinsics, intrinsics=prepared.intrinsics, return_aux=True,
        )
        assert isinstance(out, dict)
        out["timings"]["preprocess"] = t_pre.stages.get("preprocess", 0.0)
        if not return_aux:
            return out["actions"][0]
        out["actions"] = out["actions"][0]
        return out

    # ------------------------------------------------------------------ warm-up
    def warmup(self, batch_sizes: Sequence[int] = (1,), steps: int = 2) -> float:
        """Runs every graph once per batch size on zeros (allocations, TensorRT/ORT lazy init). Returns ms."""
        t0 = time.perf_counter()
        pre = self.preprocess_spec
        v, (h, w) = self.images.num_views, self.images.size
        for b in batch_sizes:
            ids = np.full((b, int(pre.get("max_text_len", 50))), int(pre.get("pad_token_id", 1) or 1), np.int64)
            ext = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1)) if self.needs_pose else None
            intr = np.tile(np.eye(3, dtype=np.float32), (b, v, 1, 1)) if self.needs_pose else None
            enc = self.encode(ids, np.zeros((b, v, 3, h, w), np.float32), np.ones((b, v), bool), ext, intr)
            self.denoise(enc, np.zeros((b, self.dim), np.float32), np.zeros((b,), np.int64), steps=steps,
                         task_id=np.zeros((b,), np.int64) if self.needs_task else None,
                         skill_id=np.zeros((b,), np.int64) if self.takes_skill else None)
        return (time.perf_counter() - t0) * 1000.0
