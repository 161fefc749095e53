"""FLOPs per action chunk, counted by PyTorch on the meta device (no memory, no weights).

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of every matmul, convolution
and attention kernel the forward dispatches (a multiply-add is 2 FLOPs); elementwise ops,
norms and softmax are not counted (a few % of the total for transformers). A chunk is::

    vlm once  (+ geometry once)  +  steps x one action-transformer step

each counted separately on the exported graph modules (``xvla.export.policies.xvla.graphs``) at batch 1.
FLOPs are linear in the batch for every counted op, so batch b costs b times as much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from xvla.benchmarks.presets import build_model, get_preset, parameter_count


@dataclass
class ChunkFlops:
    preset: str
    params: int
    steps: int
    vlm: int
    geometry: int
    action_step: int
    chunk: int
    method: str

    def per_stage(self) -> dict[str, int]:
        return {"vlm": self.vlm, "geometry": self.geometry, "action_step": self.action_step, "chunk": self.chunk}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunk_gflops"] = round(self.chunk / 1e9, 3)
        return d


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def count_chunk_flops(preset: str, steps: int = 10, num_views: int = 3, image_size: tuple[int, int] = (224, 224),
                      text_len: int = 50, device: str = "meta", model: Optional[Any] = None) -> ChunkFlops:
    """Counts vlm, geometry and one action step of ``preset`` at batch 1 (meta device by default)."""
    import torch

    from xvla.export.policies.xvla.graphs import (
        ActionGraph,
        GeometryGraph,
        VLMGraph,
        model_has_geometry,
        model_has_prompts,
    )

    model = model if model is not None else build_model(preset, device=device)
    model.requires_grad_(False)  # FlopCounterMode's module tracker hooks autograd for inputs that need grad
    dev = torch.device(device)
    h, w = image_size
    cfg = model.config
    with torch.no_grad():
        img = torch.zeros(1, num_views, 3, h, w, device=dev)
        mask = torch.ones(1, num_views, dtype=torch.bool, device=dev)
        ids = torch.ones(1, text_len, dtype=torch.long, device=dev)
        vlm = VLMGraph(model)
        box: dict[str, Any] = {}
        vlm_flops = _count(lambda: box.setdefault("vlm", vlm(img, mask, ids)))
        feats, aux = box["vlm"][0], box["vlm"][1]
        geo_flops, geo = 0, None
        if model_has_geometry(model):
            ext = torch.eye(4, device=dev).expand(1, num_views, 4, 4).contiguous()
            intr = torch.eye(3, device=dev).expand(1, num_views, 3, 3).contiguous()
            g = GeometryGraph(model)
            geo_flops = _count(lambda: box.setdefault("geo", g(img, ext, intr)))
            geo = box["geo"]
        prompts = model_has_prompts(model)
        dm = int(model.action_space.model_dim)
        step = ActionGraph(model, prompts, geo is not None)
        args = [torch.zeros(1, int(cfg.num_actions), dm, device=dev), torch.full((1,), 0.5, device=dev),
                torch.zeros(1, dm, device=dev), feats, aux, torch.zeros(1, dtype=torch.long, device=dev)]
        if prompts:
            args += [torch.zeros(1, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev)]
        if geo is not None:
            args.append(geo)
        step_flops = _count(lambda: step(*args))
    return ChunkFlops(preset=preset, params=parameter_count(model), steps=steps, vlm=vlm_flops, geometry=geo_flops,
                      action_step=step_flops, chunk=vlm_flops + geo_flops + steps * step_flops,
                      method=f"torch FlopCounterMode on {dev.type}, batch 1, {num_views} views {h}x{w}")


def count_all(presets: list[str], steps: int = 10) -> dict[str, dict[str, Any]]:
    """FLOPs for each preset; a preset that cannot be built here is reported with the reason."""
    out: dict[str, dict[str, Any]] = {}
    for name in presets:
        try:
            get_preset(name).config()
            out[name] = count_chunk_flops(name, steps).to_dict()
        except Exception as exc:  # noqa: BLE001 - report, do not abort the whole benchmark
            out[name] = {"preset": name, "error": f"{type(exc).__name__}: {exc}"}
    return out
