"""Discovery and loading of the DA3 / DA3-XVLA geometry goldens (public or held-out set).

Nothing about the set is hard-coded: the DA3 architecture and schedule come from `config.json`
(`da3_config` + `vit_kwargs` + `cam_enc_kwargs`), the inline-encoder settings from its
`da3_inline` section, the conditioner sizes from `geometry_conditioning`, the hidden size and MLP
ratio from `xvla_hidden_size` / `xvla_mlp_ratio`; layer indices for the comparisons are parsed
from the golden keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from xvla.export.policies.xvla.model.da3 import DA3Config, DA3Net, load_da3_state_dict
from xvla.export.policies.xvla.model.geometry import GeometryConfig, GeometryCrossAttentionFusion, GeometryEncoder

WEIGHTS = "da3_tiny_weights.safetensors"
CONDITIONER_PREFIX = "geometry_conditioner."
FUSION_PREFIX = "transformer.geometry_fusion."


def da3_root(conformance_dir: Path) -> Optional[Path]:
    """`<dir>/da3` (the shared layout) or `<dir>` itself when it directly holds the DA3 set."""
    for cand in (Path(conformance_dir) / "da3", Path(conformance_dir)):
        if (cand / "config.json").is_file() and (cand / WEIGHTS).is_file():
            return cand
    return None


@dataclass(frozen=True)
class DA3Set:
    root: Path
    config: dict
    da3: DA3Config
    geometry: GeometryConfig
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]  # da3_outputs.safetensors
    geometry_outputs: dict[str, torch.Tensor]  # xvla_geometry_outputs.safetensors
    geometry_weights: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]

    @property
    def feature_layer(self) -> int:
        return self.geometry.feature_layer

    def layer_keys(self, pattern: str) -> dict[int, str]:
        """{layer: key} for golden keys matching `pattern` with one `(\\d+)` group."""
        rx = re.compile(pattern)
        return {int(m.group(1)): k for k in self.outputs for m in [rx.fullmatch(k)] if m}


def geometry_config(config: dict, da3: DA3Config) -> GeometryConfig:
    gc = dict(config["geometry_conditioning"])
    inline = config.get("da3_inline", {})
    # The inline encoder's own settings win over the conditioner dict (they are what ran).
    for src, dst in (("feature_layer", "da3_feature_layer"), ("feature_size", "da3_feature_size"),
                     ("process_res", "da3_process_res")):
        if src in inline:
            gc[dst] = inline[src]
    return GeometryConfig.from_official(
        gc, hidden_size=int(config["xvla_hidden_size"]), mlp_ratio=float(config["xvla_mlp_ratio"]), da3=da3
    )


@lru_cache(maxsize=2)
def load_set(root: Path) -> DA3Set:
    config = json.loads((root / "config.json").read_text())
    da3 = DA3Config.from_official(config)
    return DA3Set(
        root=root,
        config=config,
        da3=da3,
        geometry=geometry_config(config, da3),
        inputs=load_file(str(root / "inputs.safetensors")),
        outputs=load_file(str(root / "da3_outputs.safetensors")),
        geometry_outputs=load_file(str(root / "xvla_geometry_outputs.safetensors")),
        geometry_weights=load_file(str(root / "xvla_geometry_weights.safetensors")),
        weights=load_file(str(root / WEIGHTS)),
    )


def strip(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def build_encoder(s: DA3Set) -> GeometryEncoder:
    """The geometry graph (DA3 inline encoder + conditioner) with the golden weights, eval mode."""
    enc = GeometryEncoder.from_config(s.geometry).eval()
    load_da3_state_dict(enc.da3_inline.net, s.weights)
    enc.geometry_conditioner.load_state_dict(strip(CONDITIONER_PREFIX, s.geometry_weights), strict=True)
    return enc


def build_fusion(s: DA3Set) -> GeometryCrossAttentionFusion:
    fusion = GeometryCrossAttentionFusion.from_config(s.geometry).eval()
    fusion.load_state_dict(strip(FUSION_PREFIX, s.geometry_weights), strict=True)
    return fusion


def build_da3(s: DA3Set) -> DA3Net:
    net = DA3Net(s.da3).eval()
    load_da3_state_dict(net, s.weights)
    return net
