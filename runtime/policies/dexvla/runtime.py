"""DexVLA behind the policy-kind boundary: reasoning generated with a KV cache, then a DDIM action chunk.

One chunk (``plan``), every engine call through ``run_engine`` so the service's ``BatchingEngine``
merges the calls of concurrent sessions:

    prepare   cameras resized to the bundle's size, chat-template prompt + image patches
              (``preprocess.DexVLAPreprocessor``, torch-free), state -> (x - mean) / (std + 1e-8)
    vision    (B, views, patches, C*T*p*p) -> image embeddings (B, N, H)
    prefill   the prompt, LEFT-padded to a multiple of ``preprocess.prompt_bucket`` -> rows, logits, KV
    decode    greedy, one token per call with the KV cache in/out, per-sample EOS, at most
              ``max_new_tokens`` (the bundle's, or PlanContext.max_new_tokens)
    condition FiLM over [prompt rows, generated rows but the last] + the ScaleDP condition MLP
    diffusion DDIM (numpy, ``sampling.DDIM``) over the denoise graph from per-sample noise
              (PlanContext.noise injects it), then MIN_MAX unnormalisation to robot space

Batching across sessions: the batcher merges calls whose per-sample shapes agree. Vision, condition
and denoise shapes do not depend on the prompt, so they always merge; prefill and decode merge when
the sessions' padded prompt lengths are equal (same bucket) and they are at the same decode step.
Calls that differ simply run separately: no cross-session padding inside the batcher.
Real-time chunking is refused at the session header (``supports_prefix=False``): DDIM has no
committed-prefix inpainting here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from xvla.core.errors import InputError
from xvla.core.images import CameraInput, resize_image
from xvla.core.manifest import BundleError
from xvla.runtime.bundle import Bundle
from xvla.runtime.engines.base import Engine
from xvla.runtime.policies.base import Chunk, ObservationInput, PlanContext, PolicySpec, Timings, run_engine
from xvla.runtime.policies.dexvla.preprocess import DexVLAPreprocessor, mrope_position_ids
from xvla.runtime.policies.dexvla.sampling import DDIM, film_row_masks

log = logging.getLogger(__name__)

GRAPHS = ("vision", "prefill", "decode", "condition", "denoise")
MAX_NEW_TOKENS_CAP = 1024


@dataclass
class PreparedDexVLA:
    """One observation as model inputs (not padded; batches are assembled in ``plan``)."""

    input_ids: np.ndarray  # (L,) int64
    pixel_values: np.ndarray  # (views, patches, C*T*p*p) float32
    state: np.ndarray  # (S,) float32, normalised
    instruction: str = ""


@dataclass
class DexVLAOutput:
    """A batch's result: robot-space actions, normalised actions, generated ids and text per sample."""

    actions: np.ndarray  # (B, T, A) unnormalised
    actions_normalized: np.ndarray  # (B, T, A)
    new_tokens: list[list[int]]  # per sample, up to and including its EOS
    texts: list[str]
    timings: Timings = field(default_factory=Timings)


class DexVLAPolicy:
    """One DexVLA bundle's engines and preprocessing (PolicyRuntime of kind ``dexvla``)."""

    kind = "dexvla"

    def __init__(self, bundle: Bundle, engines: Mapping[str, Engine], seed: int | None = None, route: str = "") -> None:
        self.bundle = bundle
        self.engines = dict(engines)
        self.route = route or bundle.name
        missing = [g for g in GRAPHS if g not in self.engines]
        if missing:
            raise BundleError(f"a DexVLA policy needs engines for graphs {missing} (bundle {bundle.root})")
        pol = bundle.policy
        pre = pol["preprocess"]
        self.camera_names = tuple(str(c) for c in pre["camera_names"])
        self.image_size = (int(pre["image_size"][0]), int(pre["image_size"][1]))
        self.resize_filter = str(pre.get("resize_filter", "bicubic"))
        self.grid_hw = (int(pre["grid_hw"][0]), int(pre["grid_hw"][1]))
        self.bucket = max(1, int(pre.get("prompt_bucket", 1)))
        self.pre = DexVLAPreprocessor.from_folder(bundle.root / pol["tokenizer"]["dir"])
        tok = pol["tokens"]
        got = {"pad": self.pre.tokens.pad, "eos": self.pre.tokens.eos, "image_pad": self.pre.tokens.image_pad,
               "vision_start": self.pre.tokens.vision_start, "vision_end": self.pre.tokens.vision_end}
        bad = {k: (v, tok[k]) for k, v in got.items() if int(tok[k]) != v}
        if bad:
            raise BundleError(f"manifest.policy.tokens: {bad} (tokenizer, manifest) disagree")
        gen = pol["generation"]
        self.eos = int(gen["eos_token_id"])
        self.fill = int(gen.get("fill_token_id", self.eos))
        self.max_new_tokens = int(gen["max_new_tokens"])
        diff = pol["diffusion"]
        self.num_train_timesteps = int(diff["num_train_timesteps"])
        self.alphas_cumprod = np.asarray(diff["alphas_cumprod"], np.float32)
        if self.alphas_cumprod.shape != (self.num_train_timesteps,):
            raise BundleError(f"manifest.policy.diffusion.alphas_cumprod: {self.alphas_cumprod.shape[0]} values for "
                              f"num_train_timesteps {self.num_train_timesteps}")
        self.default_steps = int(diff["default_steps"])
        norm = pol["normalization"]
        self.state_mean = np.asarray(norm["state"]["mean"], np.float32)
        self.state_std = np.asarray(norm["state"]["std"], np.float32)
        self.state_eps = np.float32(norm["state"].get("eps", 1e-8))
        self.action_min = np.asarray(norm["action"]["min"], np.float32)
        self.action_max = np.asarray(norm["action"]["max"], np.float32)
        self.n_layers = int(pol["kv_cache"]["layers"])
        self.horizon, self.dim = bundle.horizon, bundle.dim
        if self.action_min.shape != (self.dim,) or self.action_max.shape != (self.dim,):
            raise BundleError(f"manifest.policy.normalization.action: min/max must have {self.dim} values")
        self.rng = np.random.default_rng(seed)
        self._ddim: dict[int, DDIM] = {}
        self._spec = PolicySpec(
            kind=self.kind, name=bundle.name, action_dim=self.dim, horizon=self.horizon,
            camera_names=self.camera_names, image_size=self.image_size, proprio_dims=bundle.proprio_dims,
            action_names=bundle.action_names, gripper_dims=bundle.gripper_dims, default_steps=self.default_steps,
            noise_shape=(self.horizon, self.dim), supports_prefix=False, max_batch=bundle.max_batch, mode="joint")

    @classmethod
    def from_bundle(cls, bundle: Bundle, engines: Mapping[str, Engine], *, seed: int | None = None,
                    route: str = "") -> "DexVLAPolicy":
        return cls(bundle, engines, seed=seed, route=route)

    @property
    def spec(self) -> PolicySpec:
        return self._spec

    def close(self) -> None:
        for e in self.engines.values():
            e.close()

    # ------------------------------------------------------------------ PolicyRuntime
    def prepare(self, observation: ObservationInput, timings: Timings, field: str = "observation") -> PreparedDexVLA:
        """Cameras in the model's order, resized to the exported size; the prompt; the normalised state."""
        with timings.stage("preprocess"):
            missing = [c for c in self.camera_names if c not in observation.cameras]
            if missing:
                raise InputError(f"{field}.cameras", f"DexVLA needs every camera {list(self.camera_names)}; "
                                                     f"missing {missing}")
            images = [resize_image(np.asarray(observation.cameras[c].image), self.image_size, self.resize_filter)
                      for c in self.camera_names]
            sample = self.pre.sample(images, observation.instruction)
            grids = {tuple(int(x) for x in g) for g in sample.image_grid_thw}
            if grids != {(1, *self.grid_hw)}:
                raise InputError(f"{field}.cameras", f"image grid {sorted(grids)} != the exported {self.grid_hw}")
            return PreparedDexVLA(
                input_ids=sample.input_ids,
                pixel_values=sample.pixel_values.reshape(len(images), self.grid_hw[0] * self.grid_hw[1], -1),
                state=self.normalize_state(observation.proprio, field), instruction=observation.instruction)

    def gate_signals(self, prepared: PreparedDexVLA, timings: Timings) -> None:
        return None  # no skill head

    def plan(self, prepared: PreparedDexVLA, context: PlanContext, timings: Timings) -> Chunk:
        if context.committed is not None and len(context.committed):
            raise InputError("execution.mode", "DexVLA's DDIM sampler takes no committed prefix (RTC)")
        noise = None if context.noise is None else np.asarray(context.noise, np.float32).reshape(
            1, self.horizon, self.dim)
        out = self.generate([prepared], steps=context.steps, noise=noise, max_new_tokens=context.max_new_tokens,
                            timings=timings)
        return Chunk(actions=out.actions[0], timings=timings, text=out.texts[0],
                     aux={"new_tokens": out.new_tokens[0], "actions_normalized": out.actions_normalized[0]})

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        """Every graph once per batch size on black frames (ORT lazy init). Returns ms."""
        t0 = time.perf_counter()
        h, w = self.image_size
        obs = ObservationInput({c: CameraInput(np.zeros((h, w, 3), np.uint8)) for c in self.camera_names},
                               np.zeros(self.bundle.proprio_dims[0], np.float32), "")
        prepared = self.prepare(obs, Timings())
        for b in batch_sizes:
            self.generate([prepared] * b, steps=2, max_new_tokens=2)
        return (time.perf_counter() - t0) * 1000.0

    # ------------------------------------------------------------------ normalisation
    def normalize_state(self, proprio: np.ndarray, field: str = "observation") -> np.ndarray:
        x = np.asarray(proprio, np.float32).reshape(-1)
        if x.shape != self.state_mean.shape:
            raise InputError(f"{field}.proprio", f"expected {self.state_mean.shape[0]} values, got {x.shape[0]}")
        return ((x - self.state_mean) / (self.state_std + self.state_eps)).astype(np.float32)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """LeRobot MIN_MAX inverse: (x + 1) / 2 * (max - min) + min."""
        return ((actions + 1) / 2 * (self.action_max - self.action_min) + self.action_min).astype(np.float32)

    # ------------------------------------------------------------------ the chunk
    def ddim(self, steps: int) -> DDIM:
        if not 0 < int(steps) <= self.num_train_timesteps:
            raise InputError("execution.denoising_steps", f"must be in 1..{self.num_train_timesteps}, got {steps}")
        if steps not in self._ddim:
            d = DDIM(self.num_train_timesteps, int(steps))
            d.alphas_cumprod = self.alphas_cumprod  # the manifest's schedule is the contract
            self._ddim[steps] = d
        return self._ddim[steps]

    def _batch(self, prepared: Sequence[PreparedDexVLA]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Left-pad to a multiple of the bucket -> input_ids, attention_mask (B, L), positions (B, 3, L), deltas."""
        longest = max(len(p.input_ids) for p in prepared)
        seq = -(-longest // self.bucket) * self.bucket
        b = len(prepared)
        ids = np.full((b, seq), self.pre.tokens.pad, np.int64)
        mask = np.zeros((b, seq), np.int64)
        for i, p in enumerate(prepared):
            ids[i, seq - len(p.input_ids):] = p.input_ids
            mask[i, seq - len(p.input_ids):] = 1
        n_views = prepared[0].pixel_values.shape[0]
        grid = np.tile(np.asarray([[1, *self.grid_hw]], np.int64), (b * n_views, 1))
        pos, deltas = mrope_position_ids(ids, mask, grid, self.pre.tokens.image_pad, self.pre.tokens.vision_start,
                                         self.pre.merge_size)
        return ids, mask, np.ascontiguousarray(pos.transpose(1, 0, 2)), deltas

    def generate(self, prepared: Sequence[PreparedDexVLA], steps: int | None = None, noise: np.ndarray | None = None,
                 max_new_tokens: int | None = None, timings: Timings | None = None) -> DexVLAOutput:
        """A batch of prepared observations -> one chunk per sample (per-sample noise: (B, T, A) or drawn)."""
        timings = timings if timings is not None else Timings()
        b = len(prepared)
        if b < 1:
            raise InputError("observation", "empty batch")
        n_max = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 0 < n_max <= MAX_NEW_TOKENS_CAP:
            raise InputError("max_new_tokens", f"must be in 1..{MAX_NEW_TOKENS_CAP}, got {n_max}")
        ddim = self.ddim(self.default_steps if steps is None else int(steps))
        if noise is None:
            noise = self.rng.standard_normal((b, self.horizon, self.dim), dtype=np.float32)
        noise = np.asarray(noise, np.float32)
        if noise.shape != (b, self.horizon, self.dim):
            raise InputError("noise", f"expected shape {[b, self.horizon, self.dim]}, got {list(noise.shape)}")
        e = self.engines

        with timings.stage("vision"):
            pixels = np.stack([p.pixel_values for p in prepared]).astype(np.float32)
            image_embeds = run_engine(e["vision"], {"pixel_values": pixels}, timings)["image_embeds"]
        with timings.stage("prefill"):
            ids, mask, pos, deltas = self._batch(prepared)
            out = run_engine(e["prefill"], {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                                            "image_embeds": image_embeds}, timings)
            rows, logits = [out["hidden"]], out["logits"]
            kv = [out[f"present.k.{i}"] for i in range(self.n_layers)] + \
                 [out[f"present.v.{i}"] for i in range(self.n_layers)]
        with timings.stage("decode_tokens"):
            tokens: list[np.ndarray] = []
            unfinished, n_new = np.ones(b, bool), np.zeros(b, np.int64)
            for step in range(n_max):
                nxt = np.where(unfinished, logits.argmax(-1), self.fill).astype(np.int64)
                tokens.append(nxt)
                n_new += unfinished
                unfinished &= nxt != self.eos
                if step == n_max - 1 or not unfinished.any():
                    break
                mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
                step_pos = np.broadcast_to((kv[0].shape[2] + deltas).reshape(b, 1, 1), (b, 3, 1))
                feeds = {"token": nxt[:, None], "attention_mask": mask,
                         "position_ids": np.ascontiguousarray(step_pos, dtype=np.int64)}
                feeds.update({f"past.k.{i}": kv[i] for i in range(self.n_layers)})
                feeds.update({f"past.v.{i}": kv[self.n_layers + i] for i in range(self.n_layers)})
                out = run_engine(e["decode"], feeds, timings)
                rows.append(out["hidden"])
                logits = out["logits"]
                kv = [out[f"present.k.{i}"] for i in range(self.n_layers)] + \
                     [out[f"present.v.{i}"] for i in range(self.n_layers)]
            new = np.stack(tokens, 1)
        with timings.stage("condition"):
            hidden = np.concatenate(rows, 1)
            seqs = np.concatenate([ids, new], 1)
            im, rm = film_row_masks(seqs, ids.shape[1], n_new, self.pre.tokens.pad, hidden.shape[1])
            states = np.stack([p.state for p in prepared]).astype(np.float32)
            cond = run_engine(e["condition"], {"hidden": hidden, "input_mask": im, "reasoning_mask": rm,
                                               "states": states}, timings)["cond_emb"]
        with timings.stage("diffusion"):
            denoise = e["denoise"]
            normalized = ddim.sample(
                lambda x, t: run_engine(denoise, {"x": x, "t": t, "cond_emb": cond}, timings)["eps"], noise)
            actions = self.unnormalize_actions(normalized)
        per_sample = [[int(t) for t in new[i, : n_new[i]]] for i in range(b)]
        texts = [self.decode_text(t) for t in per_sample]
        return DexVLAOutput(actions, normalized.astype(np.float32), per_sample, texts, timings)

    def decode_text(self, token_ids: Sequence[int]) -> str:
        """Generated ids -> the reasoning text (EOS and other special tokens dropped)."""
        return self.pre.tokenizer.decode([int(t) for t in token_ids if int(t) != self.eos], skip_special_tokens=True)

