"""Fake engines with hand-checkable outputs, for execution, batching and server logic tests."""

from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np

from xvla.runtime.engines.base import Engine, EngineInfo, TensorSpec


class RecordingEngine(Engine):
    """out = sum of every input's per-row mean, broadcast to [B, 2]; records batch sizes of its calls."""

    def __init__(self, names=("a", "b"), delay_s: float = 0.0) -> None:
        self.inputs = [TensorSpec(n, "float32", ("batch", "dyn")) for n in names]
        self.outputs = [TensorSpec("out", "float32", ("batch", 2))]
        self.info = EngineInfo(graph="fake", backend="fake", provider="python", max_batch=8)
        self.calls: list[int] = []
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            b = next(iter(inputs.values())).shape[0]
            self.calls.append(b)
            if self.delay_s:
                time.sleep(self.delay_s)
            s = sum(np.asarray(v, np.float64).reshape(b, -1).mean(axis=1) for v in inputs.values())
            return {"out": np.repeat(s[:, None], 2, axis=1).astype(np.float32)}
        finally:
            with self._lock:
                self.concurrent -= 1


# ---------------------------------------------------------------------------------------------- fake policies
# A policy built from Python engines and an in-memory manifest, with outputs chosen so that the
# right answer is obvious: the action graph predicts action[b, j, :] = proprio[b, :] + j + offset.
# A robot that reports proprio = frame index therefore gets action == frame index at EVERY frame
# if (and only if) chunks are placed on the frame axis correctly (latency compensation).

from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

from xvla.runtime.bundle import Bundle  # noqa: E402
from xvla.runtime.policies.xvla.runtime import XVLAPolicy as Policy  # noqa: E402

FAKE_T, FAKE_D = 8, 3
FAKE_CAMERAS = ("head", "left_wrist")
FAKE_SKILLS = [{"id": 0, "name": "navigate to"}, {"id": 1, "name": "pick up from"}, {"id": 2, "name": "press"}]


def write_fake_tokenizer(d: Path) -> Path:
    """A byte-level BPE vocabulary (256 byte symbols + BART specials), no merges."""
    import json

    from tokenizers import pre_tokenizers

    d.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return d


def fake_manifest(skills: Sequence[dict] = (), gripper_dims=(FAKE_D - 1,), tasks: Sequence[dict] = (),
                  domains: dict | None = None) -> dict:
    """A format-1 manifest (upgraded on read, as old bundles are)."""
    return {
        "format_version": 1, "policy_kind": "xvla", "model_name": "fake",
        "action_space": {"mode": "auto", "dim": FAKE_D, "model_dim": FAKE_D, "num_actions": FAKE_T,
                         "idx_for_delta": [], "idx_for_mask_proprio": [], "gripper_dims": list(gripper_dims),
                         "sigmoid_dims": []},
        "preprocess": {"image_size": [8, 8], "resize_filter": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
                       "num_views": len(FAKE_CAMERAS), "camera_names": list(FAKE_CAMERAS), "max_text_len": 8,
                       "pad_token_id": 1, "proprio": {"dim": FAKE_D}},
        "denoising": {"default_steps": 2}, "skills": list(skills), "tasks": list(tasks), "domains": dict(domains or {"default": 0}),
        "graphs": {"vlm": {"file": "vlm.onnx"}, "action": {"file": "action.onnx"}},
        "precision": "fp32", "max_batch": 8, "files": {}, "model_config": {"num_domains": 30},
    }


class FakeVLM(Engine):
    """vlm_features = per-sample image mean; skill logits from ``script(call_index)`` (a forced classifier)."""

    def __init__(self, script: Callable[[int], Sequence[float]] | None = None, num_skills: int = 0, delay_s: float = 0.0):
        self.inputs = [TensorSpec("image_input", "float32", ()), TensorSpec("image_mask", "bool", ()),
                       TensorSpec("input_ids", "int64", ())]
        outs = ["vlm_features", "aux_visual_inputs"] + (["skill_logits", "progress"] if script else [])
        self.outputs = [TensorSpec(n, "float32", ()) for n in outs]
        self.info = EngineInfo(graph="vlm", backend="fake", provider="python", max_batch=8)
        self.script, self.num_skills, self.delay_s = script, num_skills, delay_s
        self.calls = 0
        self.batch_sizes: list[int] = []

    def run(self, inputs):
        b = inputs["image_input"].shape[0]
        self.batch_sizes.append(b)
        if self.delay_s:
            time.sleep(self.delay_s)
        feat = np.repeat(inputs["image_input"].reshape(b, -1).mean(axis=1)[:, None, None], 4, axis=2).astype(np.float32)
        out = {"vlm_features": np.repeat(feat, 2, axis=1), "aux_visual_inputs": np.zeros((b, 2, 4), np.float32)}
        if self.script is not None:
            logits = []
            for _ in range(b):
                logits.append(self.script(self.calls))
                self.calls += 1
            out["skill_logits"] = np.asarray(logits, np.float32)
            out["progress"] = np.tile(np.linspace(0.1, 0.9, self.num_skills, dtype=np.float32), (b, 1))
        else:
            self.calls += b
        return out


class FakeAction(Engine):
    """x0 prediction: action[b, j, :] = proprio[b, :] + j + offset (+ 100 * skill_id with skill prompts)."""

    def __init__(self, offset: float = 0.0, skill_input: bool = False, delay_s: float = 0.0,
                 per_chunk: Callable[[int], float] | None = None, steps: int = 2):
        names = ["x_t", "t", "proprio", "vlm_features", "aux_visual_inputs", "domain_id"] + (["skill_id"] if skill_input else [])
        self.inputs = [TensorSpec(n, "float32", ()) for n in names]
        self.outputs = [TensorSpec("action", "float32", ("batch", FAKE_T, FAKE_D))]
        self.info = EngineInfo(graph="action", backend="fake", provider="python", max_batch=8)
        self.offset, self.skill_input, self.delay_s = offset, skill_input, delay_s
        self.per_chunk, self.steps, self.calls = per_chunk, steps, 0
        self.batch_sizes: list[int] = []

    def run(self, inputs):
        p = inputs["proprio"]
        b = p.shape[0]
        self.batch_sizes.append(b)
        if self.delay_s:
            time.sleep(self.delay_s)
        extra = self.per_chunk(self.calls // self.steps) if self.per_chunk else 0.0
        self.calls += 1
        a = p[:, None, :] + np.arange(FAKE_T, dtype=np.float32)[None, :, None] + self.offset + extra
        if self.skill_input:
            a = a + 100.0 * inputs["skill_id"].astype(np.float32)[:, None, None]
        return {"action": a.astype(np.float32)}


def fake_policy(root: Path, vlm: FakeVLM | None = None, action: FakeAction | None = None,
                skills: Sequence[dict] = (), route: str = "", domains: dict | None = None) -> Policy:
    write_fake_tokenizer(root / "tokenizer")
    bundle = Bundle(root=root, manifest=fake_manifest(skills, domains=domains))
    return Policy(bundle, {"vlm": vlm or FakeVLM(), "action": action or FakeAction()}, seed=0, route=route)


def fake_factory(policies: dict[str, Policy]):
    """A PolicyService policy_factory returning prebuilt fake policies by route name."""
    return lambda route, path, cfg: policies[route]
