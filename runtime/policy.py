"""The offline Python API: ``Policy.load(bundle_dir)``, then ``generate_actions`` or ``act``.

``generate_actions`` takes exactly the PyTorch model's arguments (numpy in, numpy out) so a
notebook written against the PyTorch model runs unchanged on exported engines. ``act`` takes
a raw robot observation and does the bundle's preprocessing first.

The service uses the same object through two lower-level steps, ``encode`` (VLM, geometry,
skill heads: once per chunk) and ``denoise`` (the flow-matching loop: the action graph once
per step, with an optional RTC prefix), so it can choose the skill and the route between them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xvla.runtime.bundle import Bundle
from xvla.runtime.engines.base import Engine, StaticInputs
from xvla.runtime.preprocess import (
    CameraInput,
    ImagePreprocessor,
    InputError,
    InstructionTokenizer,
    ProprioPreprocessor,
    check_pose,
)

log = logging.getLogger(__name__)

STAGES = ("preprocess", "vlm", "geometry", "denoise", "decode", "queue_wait")


@dataclass
class Timings:
    """Milliseconds per stage of one chunk; ``queue_wait`` is time spent in batchers (window + busy engine)."""

    preprocess: float = 0.0
    vlm: float = 0.0
    geometry: float = 0.0
    denoise: float = 0.0
    decode: float = 0.0
    queue_wait: float = 0.0
    batch_size: int = 1

    @property
    def total(self) -> float:
        return self.preprocess + self.vlm + self.geometry + self.denoise + self.decode

    def as_dict(self) -> dict[str, float]:
        d = {s: float(getattr(self, s)) for s in STAGES}
        d["total"] = self.total
        d["batch_size"] = self.batch_size
        return d


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


@dataclass
class Observation:
    """A raw robot observation for ``Policy.act``.

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


def _run(engine: Engine, feeds: Mapping[str, np.ndarray], timings: Timings,
         static: StaticInputs | None = None) -> dict[str, np.ndarray]:
    """Runs an engine, booking batcher waits as queue_wait (BatchingEngine reports them).

    ``static`` (from ``engine.bind_static``) carries the inputs that do not change between calls.
    """
    if static is not None:
        with_stats = getattr(engine, "run_bound_with_stats", None)
        if with_stats is None:
            return engine.run_bound(static, feeds)
        out, stats = with_stats(static, feeds)
        timings.queue_wait += stats.wait_ms
        timings.batch_size = max(timings.batch_size, stats.batch_size)
        return out
    with_stats = getattr(engine, "run_with_stats", None)
    if with_stats is None:
        return engine.run(feeds)
    out, stats = with_stats(feeds)
    timings.queue_wait += stats.wait_ms
    timings.batch_size = max(timings.batch_size, stats.batch_size)
    return out


class Policy:
    """One bundle's engines and preprocessing."""

    def __init__(self, bundle: Bundle, engines: Mapping[str, Engine], seed: int | None = None, route: str = "") -> None:
        for g in ("vlm", "action") + (("geometry",) if bundle.has_geometry else ()):
            if g not in engines:
                raise ValueError(f"Policy needs an engine for graph {g!r}")
        self.bundle = bundle
        self.engines = dict(engines)
        self.route = route or bundle.name
        pre = bundle.preprocess
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        providers: Sequence[str] = ("cpu",),
        allow_fallback: bool = False,
        intra_op_threads: int = 0,
        verify: bool = True,
        seed: int | None = None,
        route: str = "",
    ) -> "Policy":
        """Loads and checks a bundle and creates its engines. Unavailable providers raise unless allow_fallback."""
        from xvla.runtime.engines.factory import create_engine, is_torch, parse_providers

        bundle = Bundle.load(bundle_dir, verify_hashes=verify)
        flags = parse_providers(list(providers))
        if is_torch(flags):  # lazily imported: torch (and xvla.export) only when asked for
            from xvla.runtime.engines.torch_engine import create_torch_engines

            return cls(bundle, create_torch_engines(bundle, flags[0], route=route), seed=seed, route=route)
        graphs = [g for g in ("vlm", "geometry", "action", "chunk") if g in bundle.graphs]
        engines = {g: create_engine(bundle, g, providers, allow_fallback, intra_op_threads, route=route) for g in graphs}
        return cls(bundle, engines, seed=seed, route=route)

    def close(self) -> None:
        for e in self.engines.values():
            e.close()

    # ------------------------------------------------------------------ properties
    @property
    def horizon(self) -> int:
        return self.bundle.horizon

    @property
    def dim(self) -> int:
        return self.bundle.dim

    @property
    def model_dim(self) -> int:
        return self.bundle.model_dim

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
        t0 = time.perf_counter()
        out = _run(self.engines["vlm"], {
            "input_ids": np.asarray(input_ids, np.int64),
            "image_input": np.asarray(image_input, np.float32),
            "image_mask": np.asarray(image_mask, bool),
        }, timings)
        t1 = time.perf_counter()
        timings.vlm += (t1 - t0) * 1000.0
        features = {k: v for k, v in out.items() if k in ("vlm_features", "aux_visual_inputs")}
        if self.needs_pose:
            if extrinsics is None or intrinsics is None:
                raise InputError("extrinsics/intrinsics", "this policy has a geometry encoder: camera poses are required")
            geo = _run(self.engines["geometry"], {
                "image_input": np.asarray(image_input, np.float32),
                "extrinsics": np.asarray(extrinsics, np.float32),
                "intrinsics": np.asarray(intrinsics, np.float32),
            }, timings)
            features["geometry_tokens"] = geo["geometry_tokens"]
            timings.geometry += (time.perf_counter() - t1) * 1000.0
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
        step (real-time chunking); see xvla.runtime.flow_matching.
        """
        from xvla.runtime.flow_matching import flow_matching_chunk, postprocess_actions

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
        t0 = time.perf_counter()
        p_len = 0 if prefix is None else int(prefix.shape[1])
        if not p_len and self._unrolled_steps == int(steps):
            # the whole loop as one graph (exported with --unrolled): one engine call instead of N
            feeds["x1"] = noise
            raw = _run(self.engines["chunk"], feeds, timings)["action"]
        else:
            # The conditioning (VLM features, proprio, ids) is the same for every step: bound once per
            # chunk, so a GPU engine uploads it once and each step only sends x_t and t.
            binder = getattr(action_engine, "bind_static", None)
            static = binder(feeds) if binder is not None else None

            def step(x_t: np.ndarray, t: np.ndarray) -> np.ndarray:  # t: [B] float32
                if static is None:
                    return _run(action_engine, {**feeds, "x_t": x_t, "t": t}, timings)["action"]
                return _run(action_engine, {"x_t": x_t, "t": t}, timings, static)["action"]

            raw = flow_matching_chunk(step, noise, int(steps), prefix=prefix if p_len else None, prefix_len=p_len)
        t1 = time.perf_counter()
        actions = postprocess_actions(raw, proprio_m, self.bundle.action_space)
        timings.denoise += (t1 - t0) * 1000.0
        timings.decode += (time.perf_counter() - t1) * 1000.0
        return np.asarray(actions, np.float32), np.asarray(raw, np.float32)

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

    # ------------------------------------------------------------------ raw observations
    def tokenize(self, instruction: str) -> np.ndarray:
        if self.tokenizer is None:
            raise InputError("instruction", f"bundle {self.bundle.root} ships no tokenizer/ folder")
        return self.tokenizer(instruction)

    def prepare(
        self,
        cameras: Mapping[str, CameraInput],
        proprio: np.ndarray,
        instruction: str,
        field: str = "observation",
    ) -> PreparedObservation:
        """Preprocessing by the bundle's contract (resize, normalise, view order, intrinsics, proprio, tokens)."""
        t0 = time.perf_counter()
        v = self.images.num_views
        for name, cam in cameras.items():
            cam.extrinsics = check_pose(cam.extrinsics, (4, 4), f"{field}.cameras[{name}].extrinsics")
            cam.intrinsics = check_pose(cam.intrinsics, (3, 3), f"{field}.cameras[{name}].intrinsics")
            if self.needs_pose and (cam.extrinsics is None or cam.intrinsics is None):
                raise InputError(f"{field}.cameras[{name}].extrinsics",
                                 "this policy has a geometry encoder: every camera needs extrinsics and intrinsics")
        imgs = self.images(cameras, f"{field}.cameras")
        state = self.proprio(proprio, f"{field}.proprio")
        ids = self.tokenize(instruction)
        prepared = PreparedObservation(
            input_ids=ids[None],
            image_input=imgs.image_input[None],
            image_mask=imgs.image_mask[None],
            proprio=state[None],
            extrinsics=imgs.extrinsics.reshape(1, v, 4, 4) if self.needs_pose else None,
            intrinsics=imgs.intrinsics.reshape(1, v, 3, 3) if self.needs_pose else None,
        )
        prepared.preprocess_ms = (time.perf_counter() - t0) * 1000.0
        return prepared

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
        prepared = self.prepare(cameras, np.asarray(obs.proprio), obs.instruction)
        domain = obs.domain_id if obs.domain_id is not None else int(self.bundle.manifest.get("domains", {}).get("default", 0))
        out = self.generate_actions(
            prepared.input_ids, prepared.image_input, prepared.image_mask, np.array([domain], np.int64),
            prepared.proprio, steps=steps or self.bundle.default_steps,
            noise=None if noise is None else np.asarray(noise, np.float32).reshape(1, self.horizon, self.model_dim),
            task_id=None if obs.task_id is None else np.array([obs.task_id], np.int64),
            skill_id=None if obs.skill_id is None else np.array([obs.skill_id], np.int64),
            extrinsics=prepared.extrinsics, intrinsics=prepared.intrinsics, return_aux=True,
        )
        assert isinstance(out, dict)
        out["timings"]["preprocess"] = prepared.preprocess_ms
        if not return_aux:
            return out["actions"][0]
        out["actions"] = out["actions"][0]
        return out

    # ------------------------------------------------------------------ warm-up
    def warmup(self, steps: int = 2, batch_sizes: Sequence[int] = (1,)) -> float:
        """Runs every graph once per batch size on zeros (allocations, TensorRT/ORT lazy init). Returns ms."""
        t0 = time.perf_counter()
        pre = self.bundle.preprocess
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
