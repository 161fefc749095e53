"""`DA3Net`: the parts of `DepthAnything3Net` that X-VLA runs (backbone + camera encoder).

Module names reproduce upstream's state-dict keys: `backbone.pretrained.*` and `cam_enc.*`.
The DualDPT `head` and `cam_dec` are not built (they never influence the features X-VLA reads,
quirk Q23); `load_da3_state_dict` skips their keys explicitly.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from xvla.export.policies.xvla.model.da3.camera import CameraEncoder, pose_encoding
from xvla.export.policies.xvla.model.da3.config import DA3Config
from xvla.export.policies.xvla.model.da3.vit import VisionTransformer


class DA3Backbone(nn.Module):
    """`DinoV2` wrapper: holds the ViT under the name `pretrained`."""

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.out_layers = tuple(cfg.out_layers)
        self.pretrained = VisionTransformer(cfg)


class DA3Net(nn.Module):
    """Backbone + camera encoder of Depth-Anything-3 (posed or unposed multi-view)."""

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = DA3Backbone(cfg)
        self.cam_enc: CameraEncoder | None = CameraEncoder(cfg) if cfg.use_cam_enc else None

    @property
    def vit(self) -> VisionTransformer:
        return self.backbone.pretrained

    def camera_tokens(
        self, extrinsics: torch.Tensor | None, intrinsics: torch.Tensor | None, image_hw: tuple[int, int]
    ) -> torch.Tensor | None:
        """Camera tokens [B, S, C] from world-to-camera E and pixel K; None -> unposed mode."""
        if extrinsics is None and intrinsics is None:
            return None
        if extrinsics is None or intrinsics is None:
            raise ValueError("DA3 posed mode needs both extrinsics and intrinsics (got only one)")
        if self.cam_enc is None:
            raise ValueError(f"DA3 config {self.cfg.name!r} has no camera encoder; call it without a pose")
        return self.cam_enc(pose_encoding(extrinsics, intrinsics, image_hw))

    def forward(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        feature_layers: Sequence[int] = (),
    ) -> list[torch.Tensor]:
        """Images [B,S,3,H,W] (the network's own input range) -> `feat_layer_i` [B,S,h,w,C] per layer."""
        cam = self.camera_tokens(extrinsics, intrinsics, tuple(images.shape[-2:]))
        return self.vit.features(images, cam, list(feature_layers))

    def intermediate_layers(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What `DinoV2.forward` hands the DPT head: (patch tokens, camera token) per out layer."""
        cam = self.camera_tokens(extrinsics, intrinsics, tuple(images.shape[-2:]))
        return self.vit.intermediate_layers(images, cam)


class DA3Hub(nn.Module):
    """The Hugging Face `DepthAnything3` container: `model` is the network, so `state_dict()` is the
    hub checkpoint layout (`model.<DepthAnything3Net key>`), and inside X-VLA `da3_inline.model.model.*`."""

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.model = DA3Net(cfg)
