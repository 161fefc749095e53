"""The model sizes the benchmarks run, and how each is built with seeded random weights.

Latency and FLOPs do not depend on the weights, so every preset is built from its config
with ``torch.manual_seed(seed)``; no checkpoint is needed.

Every benchmark runs the **R1Pro variant** of a topology: the 23-d BEHAVIOR-1K action
(``action_mode="auto"``, delta dims of the arms/torso), which is what the simulated R1Pro
agents of the closed-loop benchmark execute. The action head's size barely changes with
the action dim (23 vs 20), so the numbers hold for the native heads too.

``xvla-small`` is ours: the X-VLA topology (DaViT 4 stages -> BART encoder -> soft-prompted
action transformer) at widths a 2-core / 24 GiB machine runs in well under a second per
chunk, so a CPU box can show a mid-size model end to end:

=========================  ==========================  =========================
block                      xvla-0.9b                   xvla-small
=========================  ==========================  =========================
DaViT widths / depths      256-512-1024-2048 / 1-1-9-1  48-96-192-384 / 1-1-3-1
BART encoder               d1024, 12 layers, ffn 4096  d256, 4 layers, ffn 1024
vocabulary                 51289                       51289
action transformer         1024 wide, 24 deep, 16 h    256 wide, 6 deep, 4 h
=========================  ==========================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from xvla.export.policies.xvla.model import XVLAConfig
from xvla.export.policies.xvla.model.config import BartEncoderConfig, DaViTConfig, FlorenceConfig, r1pro_variant


def _xvla_small() -> XVLAConfig:
    vision = DaViTConfig(dim_embed=(48, 96, 192, 384), depths=(1, 1, 3, 1), num_heads=(2, 4, 6, 12),
                         num_groups=(2, 4, 6, 12), projection_dim=256)
    text = BartEncoderConfig(vocab_size=51289, d_model=256, encoder_layers=4, encoder_attention_heads=4,
                             encoder_ffn_dim=1024, max_position_embeddings=1024)
    return XVLAConfig(florence_config=FlorenceConfig(vision, text, projection_dim=256),
                      hidden_size=256, depth=6, num_heads=4)


if "xvla-small" not in XVLAConfig.PRESETS:
    XVLAConfig.register_preset("xvla-small", _xvla_small)
    XVLAConfig.register_preset("xvla-small-r1pro", lambda: r1pro_variant(_xvla_small()))
if "tiny-geo" in XVLAConfig.PRESETS and "tiny-geo-r1pro" not in XVLAConfig.PRESETS:
    XVLAConfig.register_preset("tiny-geo-r1pro", lambda: r1pro_variant(XVLAConfig.preset("tiny-geo")))


@dataclass(frozen=True)
class BenchPreset:
    """A benchmark model: which registered XVLAConfig preset it is and what it is for."""

    name: str
    config_preset: str  # the XVLAConfig preset (R1Pro variant) that builds it
    geometry: bool
    description: str

    def config(self) -> XVLAConfig:
        if self.config_preset not in XVLAConfig.PRESETS:
            raise KeyError(f"preset {self.name!r}: the model preset {self.config_preset!r} is not registered "
                           f"(known: {XVLAConfig.preset_names()})")
        return XVLAConfig.preset(self.config_preset)


PRESETS: dict[str, BenchPreset] = {
    p.name: p for p in (
        BenchPreset("tiny", "tiny-r1pro", False, "CI size: same topology as 0.9B, widths 16-64"),
        BenchPreset("tiny-geo", "tiny-geo-r1pro", True, "tiny + a tiny DA3 geometry encoder"),
        BenchPreset("xvla-small", "xvla-small-r1pro", False, "mid size for CPU machines (defined here)"),
        BenchPreset("xvla-0.9b", "xvla-0.9b-r1pro", False, "X-VLA-0.9B (Florence-2-large encoder)"),
        BenchPreset("da3-xvla", "da3-xvla-r1pro", True, "X-VLA-0.9B + DA3-LARGE geometry encoder (v17)"),
    )
}


def get_preset(name: str) -> BenchPreset:
    if name not in PRESETS:
        raise KeyError(f"unknown benchmark preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


# A geometry preset is built by the model package's own builder when it provides one.
ModelBuilder = Callable[[XVLAConfig], Any]


def _model_builder() -> ModelBuilder:
    from xvla.export.policies.xvla.model import XVLA

    return XVLA


def build_model(name: str, seed: int = 0, device: Optional[str] = None) -> Any:
    """The preset's XVLA in eval mode with seeded random weights (``device="meta"``: shapes only, no memory)."""
    import torch

    cfg = get_preset(name).config()
    builder = _model_builder()
    if device == "meta":
        with torch.device("meta"):
            model = builder(cfg).eval()
        return model.to("meta")  # constant buffers may be built on the CPU even under a meta device
    torch.manual_seed(seed)
    model = builder(cfg).eval()
    return model.to(device) if device else model


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
