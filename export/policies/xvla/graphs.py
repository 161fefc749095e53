"""The exported graphs: thin nn.Module wrappers that fix each graph's inputs, outputs and names.

The runtime never sees PyTorch, so everything that varies per request (batch, domain, task,
skill, denoising time) is a graph INPUT, and embodiment-specific weights are gathered inside
the graph from the id inputs: one engine serves every domain, task and skill.

* ``vlm``      (image_input, image_mask, input_ids) -> vlm_features, aux_visual_inputs
               (+ skill_logits, progress with v20 skill heads). Once per chunk.
* ``geometry`` (image_input, extrinsics, intrinsics) -> geometry_tokens. Once per chunk,
               geometry (DA3) checkpoints only.
* ``action``   ONE denoising step: (x_t RAW, t, proprio, vlm_features, aux_visual_inputs,
               domain_id [, task_id, skill_id] [, geometry_tokens]) -> action, the clean-action
               (x0) prediction before postprocess. The graph applies the action-space
               PREPROCESS itself (gripper zeroing, proprio masking), so the runtime's loop is
               the plain official arithmetic (xvla.core.flow_matching).
* ``chunk``    optional: the whole loop unrolled for a fixed number of steps, (x1, proprio,
               features, ids) -> action (raw, before postprocess).

Every graph has one dynamic axis, ``batch``; all other sizes are fixed at export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

BATCH = "batch"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest records it (``shape[0]`` is ``"batch"``)."""

    name: str
    dtype: str  # numpy dtype name: float32 | int64 | bool
    shape: tuple  # ints and the string "batch"

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass
class GraphSpec:
    """A graph ready to export: the module, its named I/O and a recipe for example inputs."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=list)
    # Value ranges for integer inputs (exclusive high): example data must be valid ids.
    int_ranges: dict[str, int] = field(default_factory=dict)
    # A graph exported as separately traced parts joined into one ONNX file (vlm = encoder +
    # skill heads): the encoder trace is then shared with every model of the same Florence-2.
    parts: list["GraphSpec"] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded, valid inputs of the given batch (used for tracing, shape discovery and tests)."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = spec.concrete(batch)
            if spec.dtype == "bool":
                feeds[spec.name] = np.ones(shape, dtype=bool)
            elif spec.dtype == "int64":
                feeds[spec.name] = rng.integers(0, self.int_ranges.get(spec.name, 2), size=shape, dtype=np.int64)
            elif spec.name == "t":
                feeds[spec.name] = rng.uniform(0.05, 1.0, size=shape).astype(np.float32)
            else:
                feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
        return feeds


# ------------------------------------------------------------------------------------ modules


class VLMGraph(nn.Module):
    """Florence-2 encoder (+ v20 skill heads): once per chunk."""

    def __init__(self, model: nn.Module, with_skills: Optional[bool] = None) -> None:
        super().__init__()
        self.model = model
        has = getattr(model, "skill_heads", None) is not None
        self.with_skills = has if with_skills is None else (with_skills and has)

    def forward(self, image_input: torch.Tensor, image_mask: torch.Tensor,
                input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.model.forward_vlm(input_ids, image_input, image_mask)
        out = (enc["vlm_features"], enc["aux_visual_inputs"])
        if self.with_skills:
            heads = self.model.skill_heads(enc["vlm_features"])
            out = out + (heads["skill_logits"], heads["progress"])
        return out


class SkillHeadsGraph(nn.Module):
    """The v20 heads alone (vlm_features -> skill_logits, progress): the vlm graph's second part."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, vlm_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.model.skill_heads(vlm_features)
        return heads["skill_logits"], heads["progress"]


class GeometryGraph(nn.Module):
    """DA3 backbone + conditioner -> geometry tokens: once per chunk."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_input: torch.Tensor, extrinsics: torch.Tensor,
                intrinsics: torch.Tensor) -> torch.Tensor:
        return self.model.compute_geometry_tokens(image_input, extrinsics, intrinsics)


class _ActionCall(nn.Module):
    """Shared body of the action and chunk graphs: preprocess, then one transformer call."""

    def __init__(self, model: nn.Module, with_prompts: bool, with_geometry: bool) -> None:
        super().__init__()
        self.model = model
        self.with_prompts = with_prompts
        self.with_geometry = with_geometry

    def step(self, x_t: torch.Tensor, t: torch.Tensor, proprio: torch.Tensor, vlm_features: torch.Tensor,
             aux_visual_inputs: torch.Tensor, domain_id: torch.Tensor, task_id: Optional[torch.Tensor],
             skill_id: Optional[torch.Tensor], geometry_tokens: Optional[torch.Tensor]) -> torch.Tensor:
        proprio_m, x_t_m = self.model.action_space.preprocess(proprio, x_t)
        return self.model.transformer(domain_id=domain_id, action_with_noise=x_t_m, proprio=proprio_m, t=t,
                                      vlm_features=vlm_features, aux_visual_inputs=aux_visual_inputs,
                                      task_id=task_id, skill_id=skill_id, geometry_tokens=geometry_tokens)

    def _split(self, extras: tuple[Optional[torch.Tensor], ...]) -> tuple[Optional[torch.Tensor], ...]:
        """(task_id, skill_id, geometry_tokens) from the optional trailing inputs, in that order.

        Explicit optional parameters rather than ``*args``: torch.export needs a fixed signature.
        """
        rest = [e for e in extras if e is not None]
        task_id = skill_id = geometry_tokens = None
        if self.with_prompts:
            task_id, skill_id = rest.pop(0), rest.pop(0)
        if self.with_geometry:
            geometry_tokens = rest.pop(0)
        if rest:
            raise TypeError(f"unexpected extra inputs: {len(rest)}")
        return task_id, skill_id, geometry_tokens


class ActionGraph(_ActionCall):
    """ONE denoising step on the RAW x_t (the graph applies the action-space preprocess)."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, proprio: torch.Tensor, vlm_features: torch.Tensor,
                aux_visual_inputs: torch.Tensor, domain_id: torch.Tensor, extra0: Optional[torch.Tensor] = None,
                extra1: Optional[torch.Tensor] = None, extra2: Optional[torch.Tensor] = None) -> torch.Tensor:
        task_id, skill_id, geo = self._split((extra0, extra1, extra2))
        return self.step(x_t, t, proprio, vlm_features, aux_visual_inputs, domain_id, task_id, skill_id, geo)


class ChunkGraph(_ActionCall):
    """The whole denoising loop unrolled for ``steps`` steps (same arithmetic as flow_matching)."""

    def __init__(self, model: nn.Module, with_prompts: bool, with_geometry: bool, steps: int) -> None:
        super().__init__(model, with_prompts, with_geometry)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def forward(self, x1: torch.Tensor, proprio: torch.Tensor, vlm_features: torch.Tensor,
                aux_visual_inputs: torch.Tensor, domain_id: torch.Tensor, extra0: Optional[torch.Tensor] = None,
                extra1: Optional[torch.Tensor] = None, extra2: Optional[torch.Tensor] = None) -> torch.Tensor:
        task_id, skill_id, geo = self._split((extra0, extra1, extra2))
        action = torch.zeros_like(x1)
        ones = torch.ones_like(x1[:, 0, 0])  # [B]: t as a batch vector without a data-dependent shape
        for i in range(self.steps, 0, -1):
            t = ones * float(np.float32(i / self.steps))
            x_t = x1 * t.view(-1, 1, 1) + action * (1 - t).view(-1, 1, 1)
            action = self.step(x_t, t, proprio, vlm_features, aux_visual_inputs, domain_id, task_id, skill_id, geo)
        return action


# ------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class GraphOptions:
    """Sizes fixed at export (everything but the batch)."""

    num_views: int = 3
    image_size: tuple[int, int] = (224, 224)
    max_text_len: int = 50
    chunk_steps: Optional[int] = None  # also build the unrolled ``chunk`` graph for this many steps


def traced_parts(specs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
    """What is actually traced: each graph, or its parts for composite graphs (unique names)."""
    out: dict[str, GraphSpec] = {}
    for spec in specs.values():
        for part in (spec.parts or [spec]):
            out[part.name] = part
    return out


def model_has_geometry(model: nn.Module) -> bool:
    return getattr(model, "geometry_conditioner", None) is not None


def model_has_prompts(model: nn.Module) -> bool:
    return getattr(model.transformer, "task_prompt_hub", None) is not None


def model_has_skill_heads(model: nn.Module) -> bool:
    return getattr(model, "skill_heads", None) is not None


def _f32(name: str, *shape: object) -> TensorSpec:
    return TensorSpec(name, "float32", (BATCH, *shape))


def _i64(name: str) -> TensorSpec:
    return TensorSpec(name, "int64", (BATCH,))


@torch.no_grad()
def _discover_outputs(spec: GraphSpec) -> list[TensorSpec]:
    """Run the module once (batch 2) and read the output shapes and dtypes."""
    feeds = spec.example_inputs(batch=2)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    out = spec.module(*args)
    outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != len(spec.outputs):
        raise RuntimeError(f"graph {spec.name}: {len(outs)} outputs, expected {spec.output_names}")
    found = []
    for name_spec, tensor in zip(spec.outputs, outs):
        if tensor.shape[0] != 2:
            raise RuntimeError(f"graph {spec.name}: output {name_spec.name} has no batch axis "
                               f"(shape {tuple(tensor.shape)})")
        dtype = str(tensor.detach().numpy().dtype)
        found.append(TensorSpec(name_spec.name, dtype, (BATCH, *(int(d) for d in tensor.shape[1:]))))
    return found


def build_graph_specs(model: nn.Module, options: GraphOptions = GraphOptions()) -> dict[str, GraphSpec]:
    """The graphs of ``model`` in export order: vlm, [geometry], action, [chunk]; outputs discovered."""
    model = model.eval()
    cfg = model.config
    v, (h, w), L = options.num_views, options.image_size, options.max_text_len
    if v < 1:
        raise ValueError(f"num_views must be >= 1, got {v}")
    vocab = int(cfg.florence_config.text_config.vocab_size)
    specs: dict[str, GraphSpec] = {}

    vlm_inputs = [_f32("image_input", v, 3, h, w), TensorSpec("image_mask", "bool", (BATCH, v)),
                  TensorSpec("input_ids", "int64", (BATCH, L))]
    enc_out = [TensorSpec("vlm_features", "float32", ()), TensorSpec("aux_visual_inputs", "float32", ())]
    base = GraphSpec("vlm", VLMGraph(model, with_skills=False), inputs=list(vlm_inputs), outputs=list(enc_out),
                     int_ranges={"input_ids": vocab})
    base.outputs = _discover_outputs(base)
    feat = {s.name: s for s in base.outputs}
    if model_has_skill_heads(model):
        heads = GraphSpec("skill_heads", SkillHeadsGraph(model), inputs=[feat["vlm_features"]],
                          outputs=[TensorSpec("skill_logits", "float32", ()), TensorSpec("progress", "float32", ())])
        heads.outputs = _discover_outputs(heads)
        specs["vlm"] = GraphSpec("vlm", VLMGraph(model), inputs=list(vlm_inputs),
                                 outputs=base.outputs + heads.outputs, int_ranges={"input_ids": vocab},
                                 parts=[base, heads])
    else:
        specs["vlm"] = base

    geometry = model_has_geometry(model)
    if geometry:
        specs["geometry"] = GraphSpec(
            "geometry", GeometryGraph(model),
            inputs=[_f32("image_input", v, 3, h, w), _f32("extrinsics", v, 4, 4), _f32("intrinsics", v, 3, 3)],
            outputs=[TensorSpec("geometry_tokens", "float32", ())])
        specs["geometry"].outputs = _discover_outputs(specs["geometry"])

    prompts = model_has_prompts(model)
    horizon, dm = int(cfg.num_actions), int(model.action_space.model_dim)
    cond = [_f32("proprio", dm), feat["vlm_features"], feat["aux_visual_inputs"], _i64("domain_id")]
    ranges = {"domain_id": int(cfg.num_domains)}
    if prompts:
        cond += [_i64("task_id"), _i64("skill_id")]
        ranges.update(task_id=int(cfg.num_tasks), skill_id=int(cfg.num_skills))
    if geometry:
        cond.append(specs["geometry"].outputs[0])
    action_out = [_f32("action", horizon, dm)]
    specs["action"] = GraphSpec(
        "action", ActionGraph(model, prompts, geometry),
        inputs=[_f32("x_t", horizon, dm), _f32("t")] + cond, outputs=list(action_out), int_ranges=ranges)
    specs["action"].outputs = _discover_outputs(specs["action"])
    if options.chunk_steps:
        specs["chunk"] = GraphSpec(
            "chunk", ChunkGraph(model, prompts, geometry, options.chunk_steps),
            inputs=[_f32("x1", horizon, dm)] + cond, outputs=list(action_out), int_ranges=ranges)
        specs["chunk"].outputs = _discover_outputs(specs["chunk"])
    return specs
