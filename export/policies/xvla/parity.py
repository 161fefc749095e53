"""The parity gate: the exported graphs must reproduce the PyTorch model's WHOLE chunk.

An engine that silently disagrees with its model moves a robot wrongly, so after every
export the engines run ``generate_actions`` end to end, the way the runtime will: the vlm
(and geometry) graph once, the action graph once per step inside the numpy flow-matching
loop of :mod:`xvla.core.flow_matching`, postprocess at the end. The result is compared
with ``XVLA.generate_actions`` on the same seeded inputs and noise. Max abs error and cosine
per output go into the manifest; the export fails beyond tolerance.

Tolerances (``actions``, absolute; other outputs scale with their magnitude):
fp32 1e-4 (ONNX Runtime CPU has no bf16 arithmetic, so ONNX parity is always fp32), TensorRT
fp32 1e-3 (GPU kernels), fp16 2e-2, bf16 5e-2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from xvla.core.flow_matching import flow_matching_chunk, postprocess_actions
from xvla.export.policies.xvla.graphs import GraphSpec, TensorSpec

# graph name -> feeds -> outputs
GraphRunner = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

ACTION_TOLERANCE = {"fp32": 1e-4, "trt-fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2}
MIN_COSINE = {"fp32": 0.99999, "trt-fp32": 0.9999, "fp16": 0.999, "bf16": 0.995}


@dataclass
class OutputParity:
    max_abs: float
    cosine: float
    tolerance: float
    min_cosine: float
    ref_max_abs: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs <= self.tolerance and self.cosine >= self.min_cosine)

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": float(self.max_abs), "cosine": float(self.cosine), "tolerance": float(self.tolerance),
                "min_cosine": float(self.min_cosine), "passed": self.passed}


@dataclass
class ParityReport:
    backend: str
    steps: int
    seed: int
    batch: int
    precision: str = "fp32"
    outputs: dict[str, OutputParity] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "steps": self.steps, "seed": self.seed, "batch": self.batch,
                "precision": self.precision, "passed": self.passed,
                "outputs": {k: v.to_dict() for k, v in self.outputs.items()}}

    def format(self) -> str:
        rows = [f"  {name:<18} max_abs {o.max_abs:.3e} (tol {o.tolerance:.1e})  cosine {o.cosine:.8f} "
                f"(min {o.min_cosine})  {'ok' if o.passed else 'FAIL'}" for name, o in self.outputs.items()]
        return "\n".join(rows)


def compare(ref: np.ndarray, got: np.ndarray, tolerance: float, min_cosine: float) -> OutputParity:
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return OutputParity(math.inf, 0.0, tolerance, min_cosine, float(np.abs(ref).max(initial=0.0)))
    diff = float(np.abs(ref - got).max(initial=0.0))
    if not np.all(np.isfinite(got)):
        diff = math.inf
    a, b = ref.ravel(), got.ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        cos = 1.0
    elif na == 0.0 or nb == 0.0 or not math.isfinite(diff):
        cos = 0.0
    else:
        cos = float(np.dot(a, b) / (na * nb))
    return OutputParity(diff, cos, tolerance, min_cosine, float(np.abs(ref).max(initial=0.0)))


# ------------------------------------------------------------------------------------ inputs


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[det < 0, :, 0] *= -1.0  # proper rotations only (det = +1)
    return q


def parity_inputs(model: torch.nn.Module, specs: Mapping[str, GraphSpec], batch: int = 2,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded, realistic inputs for a whole chunk: BART-style token rows, one masked view, valid poses."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    text = cfg.florence_config.text_config
    vlm_in = {s.name: s for s in specs["vlm"].inputs}
    _, v, c, h, w = vlm_in["image_input"].concrete(batch)
    L = vlm_in["input_ids"].shape[1]
    dm = int(model.action_space.model_dim)

    ids = np.full((batch, L), int(text.pad_token_id), np.int64)
    specials = {int(text.pad_token_id), int(text.bos_token_id), int(text.eos_token_id)}
    low = max(specials) + 1
    for b in range(batch):
        n = int(rng.integers(3, L - 1)) if L > 3 else 0
        ids[b, 0] = text.bos_token_id
        ids[b, 1:n + 1] = rng.integers(low, int(text.vocab_size), size=n)
        ids[b, min(n + 1, L - 1)] = text.eos_token_id
    mask = np.ones((batch, v), bool)
    if batch > 1 and v > 1:
        mask[-1, -1] = False  # exercise the absent-view path
    feeds: dict[str, np.ndarray] = {
        "input_ids": ids,
        "image_input": rng.standard_normal((batch, v, c, h, w), dtype=np.float32),
        "image_mask": mask,
        "domain_id": rng.integers(0, int(cfg.num_domains), size=batch, dtype=np.int64),
        "proprio": rng.standard_normal((batch, dm), dtype=np.float32),
        "noise": rng.standard_normal((batch, int(cfg.num_actions), dm), dtype=np.float32),
    }
    action_in = {s.name for s in specs["action"].inputs}
    if "task_id" in action_in:
        feeds["task_id"] = rng.integers(0, int(cfg.num_tasks), size=batch, dtype=np.int64)
        feeds["skill_id"] = rng.integers(0, int(cfg.num_skills), size=batch, dtype=np.int64)
    if "geometry" in specs:
        ext = np.tile(np.eye(4, dtype=np.float32), (batch, v, 1, 1))
        ext[:, :, :3, :3] = _random_rotations(rng, batch * v).reshape(batch, v, 3, 3)
        ext[:, :, :3, 3] = rng.uniform(-0.5, 0.5, size=(batch, v, 3))
        intr = np.tile(np.eye(3, dtype=np.float32), (batch, v, 1, 1))
        f = rng.uniform(90.0, 190.0, size=(batch, v))
        intr[:, :, 0, 0], intr[:, :, 1, 1] = f, f
        intr[:, :, 0, 2], intr[:, :, 1, 2] = w / 2.0, h / 2.0
        feeds["extrinsics"], feeds["intrinsics"] = ext, intr
    return feeds


# ------------------------------------------------------------------------------------ the two sides


@torch.no_grad()
def torch_chunk(model: torch.nn.Module, inputs: Mapping[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """The PyTorch model's outputs for one chunk (the reference)."""
    model = model.eval()
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    enc = model.forward_vlm(t["input_ids"], t["image_input"], t["image_mask"])
    out = {"vlm_features": enc["vlm_features"], "aux_visual_inputs": enc["aux_visual_inputs"]}
    if getattr(model, "skill_heads", None) is not None:
        heads = model.skill_heads(enc["vlm_features"])
        out.update(skill_logits=heads["skill_logits"], progress=heads["progress"])
    if "extrinsics" in t:
        out["geometry_tokens"] = model.compute_geometry_tokens(t["image_input"], t["extrinsics"], t["intrinsics"])
    out["actions"] = model.generate_actions(
        t["input_ids"], t["image_input"], t["image_mask"], t["domain_id"], t["proprio"], steps=steps,
        noise=t["noise"], task_id=t.get("task_id"), skill_id=t.get("skill_id"),
        extrinsics=t.get("extrinsics"), intrinsics=t.get("intrinsics"))
    return {k: v.detach().float().numpy() for k, v in out.items()}


def engine_chunk(run: GraphRunner, graphs: Mapping[str, Any], inputs: Mapping[str, np.ndarray], steps: int,
                 action_space: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The same chunk on exported graphs, the runtime's way (numpy loop around the action graph).

    ``graphs`` maps graph names to anything with ``inputs``/``outputs`` TensorSpec lists. With a
    ``chunk`` graph whose step count equals ``steps`` its result is returned as ``actions_chunk``.
    """
    vlm = run("vlm", {k: inputs[k] for k in ("image_input", "image_mask", "input_ids")})
    out = {k: np.asarray(v) for k, v in vlm.items()}
    cond: dict[str, np.ndarray] = {"vlm_features": out["vlm_features"], "aux_visual_inputs": out["aux_visual_inputs"]}
    if "geometry" in graphs:
        geo = run("geometry", {k: inputs[k] for k in ("image_input", "extrinsics", "intrinsics")})
        out["geometry_tokens"] = cond["geometry_tokens"] = np.asarray(geo["geometry_tokens"])
    names = [s.name for s in graphs["action"].inputs]
    proprio = np.asarray(inputs["proprio"], np.float32)
    fixed = {"proprio": proprio, "domain_id": inputs["domain_id"], **cond}
    for k in ("task_id", "skill_id"):
        if k in names:
            fixed[k] = inputs[k]

    def step(x_t: np.ndarray, t: np.ndarray) -> np.ndarray:
        feeds = {"x_t": x_t, "t": t, **fixed}
        return np.asarray(run("action", {n: feeds[n] for n in names})["action"])

    raw = flow_matching_chunk(step, inputs["noise"], steps)
    out["actions"] = postprocess_actions(raw, proprio, action_space)
    chunk = graphs.get("chunk")
    if chunk is not None and getattr(chunk, "steps", None) == steps:
        feeds = {"x1": inputs["noise"], **fixed}
        raw_c = np.asarray(run("chunk", {s.name: feeds[s.name] for s in chunk.inputs})["action"])
        out["actions_chunk"] = postprocess_actions(raw_c, proprio, action_space)
    return out


def check_parity(reference: Mapping[str, np.ndarray], engine: Mapping[str, np.ndarray], *, backend: str,
                 steps: int, seed: int, batch: int, precision: str = "fp32") -> ParityReport:
    """Compare every output the engines produced that the reference has too."""
    tol = ACTION_TOLERANCE[precision]
    min_cos = MIN_COSINE[precision]
    report = ParityReport(backend=backend, steps=steps, seed=seed, batch=batch, precision=precision)
    for name in ("vlm_features", "aux_visual_inputs", "skill_logits", "progress", "geometry_tokens", "actions",
                 "actions_chunk"):
        ref_name = "actions" if name == "actions_chunk" else name
        if name not in engine or ref_name not in reference:
            continue
        ref = reference[ref_name]
        scale = 1.0 if name.startswith("actions") else max(1.0, float(np.abs(ref).max(initial=0.0)))
        report.outputs[name] = compare(ref, engine[name], tol * scale, min_cos)
    if "actions" not in report.outputs:
        raise RuntimeError("parity: the engines produced no actions")
    return report


# ------------------------------------------------------------------------------------ runners


class OrtRunner:
    """ONNX Runtime sessions for a bundle's graphs (``providers``: ORT provider names)."""

    def __init__(self, bundle_dir: Path, graphs: Mapping[str, Any],
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0) -> None:
        from xvla.export.policies.xvla.onnx_export import ort_session

        self.graphs = graphs
        self.sessions = {name: ort_session(Path(bundle_dir) / g.file, threads=threads, providers=providers)
                         for name, g in graphs.items()}
        self.providers = {name: s.get_providers()[0] for name, s in self.sessions.items()}

    def __call__(self, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.graphs[name]
        typed = {s.name: np.ascontiguousarray(feeds[s.name], dtype=np.dtype(s.dtype)) for s in g.inputs}
        outs = self.sessions[name].run([s.name for s in g.outputs], typed)
        return {s.name: o for s, o in zip(g.outputs, outs)}


def _as_specs(entries: list[dict]) -> list[TensorSpec]:
    return [TensorSpec(e["name"], e["dtype"], tuple(e["shape"])) for e in entries]


@dataclass
class ManifestGraph:
    """A graph as the manifest describes it (what the runners need)."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: Optional[int] = None

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> "ManifestGraph":
        return cls(entry["file"], _as_specs(entry["inputs"]), _as_specs(entry["outputs"]), entry.get("steps"))
