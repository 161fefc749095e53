"""The whole X-VLA policy: Florence-2 encoder (``vlm``) + action head (``transformer``) + action space.

Inference is flow matching with an x0-predicting network (README §5)::

    enc = forward_vlm(...)                      # once per chunk
    geo = compute_geometry_tokens(...)          # once per chunk, geometry models only
    x1 = noise; action = 0
    for i = steps..1:  t = i/steps
        x_t = t*x1 + (1-t)*action               # re-noised from the same x1 (not an Euler step)
        action = transformer(preprocess(proprio, x_t), t, enc)
    return postprocess(action, proprio)         # sigmoid / delta / trim, only at the end

The public API mirrors the official ``XVLA`` (``from_pretrained``, ``forward_vlm``,
``generate_actions``); see docs/model.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from xvla.export.policies.xvla.model.action_space import ActionSpace, build_action_space
from xvla.export.policies.xvla.model.config import XVLAConfig
from xvla.export.policies.xvla.model.florence import Florence2Encoder
from xvla.export.policies.xvla.model.heads import SkillHeads, select_skill
from xvla.export.policies.xvla.model.transformer import SoftPromptedTransformer


class XVLA(nn.Module):
    def __init__(self, config: XVLAConfig) -> None:
        super().__init__()
        self.config = config
        self.num_actions = config.num_actions
        self.action_space: ActionSpace = build_action_space(config)
        self.vlm = Florence2Encoder(config.florence_config)
        dm = self.action_space.model_dim
        self.transformer = SoftPromptedTransformer.from_config(config, dim_action=dm, dim_proprio=dm)
        self.skill_heads: Optional[SkillHeads] = (
            SkillHeads(config.florence_config.projection_dim, config.num_skills) if config.skill_conditioning else None
        )
        # Geometry (DA3) parts, built when config.geometry_conditioning is enabled (export/policies/xvla/model/geometry.py).
        self.da3_inline: Optional[nn.Module] = None
        self.geometry_conditioner: Optional[nn.Module] = None
        self.geometry_config = config.geometry
        if self.geometry_config is not None:
            from xvla.export.policies.xvla.model.geometry import attach_geometry

            attach_geometry(self, self.geometry_config)

    # -- checkpoint I/O (export/checkpoint.py) -----------------------------------------
    @classmethod
    def from_pretrained(cls, path: Union[str, Path], strict: bool = True, **kwargs: Any) -> "XVLA":
        """Load the official layout (config.json + model.safetensors or a sharded index).

        ``strict=False`` loads what matches and reports the rest in ``model.load_report``.
        """
        from xvla.export.policies.xvla.checkpoint import load_pretrained

        return load_pretrained(path, strict=strict, model_cls=cls, **kwargs)

    def save_pretrained(self, path: Union[str, Path], **kwargs: Any) -> Path:
        from xvla.export.policies.xvla.checkpoint import save_pretrained

        return save_pretrained(self, path, **kwargs)

    # -- encoders -----------------------------------------------------------------------
    def forward_vlm(self, input_ids: torch.Tensor, image_input: torch.Tensor,
                    image_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> {"vlm_features": [B, 100, P], "aux_visual_inputs": [B, (V-1)*50, P]} (224x224, L=50)."""
        return self.vlm.forward_vlm(input_ids, image_input, image_mask)

    def compute_geometry_tokens(self, image_input: torch.Tensor, extrinsics: torch.Tensor,
                                intrinsics: torch.Tensor) -> torch.Tensor:
        """Geometry tokens [B, K, H] for the transformer's ``geometry_fusion`` (geometry models only).

        ``da3_inline(image_input, extrinsics, intrinsics)`` gives per-view geometry features and
        ``geometry_conditioner`` resamples them to K tokens; both are set by the geometry code
        (export/policies/xvla/model/geometry.py), which may override this method for unposed variants.
        """
        if self.da3_inline is None or self.geometry_conditioner is None:
            raise ValueError("extrinsics/intrinsics were given but this model has no geometry encoder "
                             "(da3_inline / geometry_conditioner are not set); use a geometry checkpoint "
                             "or leave extrinsics=None")
        if self.geometry_config is not None and not self.geometry_config.use_posed_da3:
            extrinsics = intrinsics = None  # upstream: without use_posed_da3 DA3 runs unposed
        elif extrinsics is None or intrinsics is None:
            raise ValueError("this geometry model is posed (use_posed_da3): pass extrinsics [B,V,4,4] "
                             "and intrinsics [B,V,3,3]")
        return self.geometry_conditioner(self.da3_inline(image_input, extrinsics, intrinsics))

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def generate_actions(self, input_ids: torch.Tensor, image_input: torch.Tensor, image_mask: torch.Tensor,
                         domain_id: torch.Tensor, proprio: torch.Tensor, steps: int = 10,
                         noise: Optional[torch.Tensor] = None, task_id: Optional[torch.Tensor] = None,
                         skill_id: Optional[torch.Tensor] = None, extrinsics: Optional[torch.Tensor] = None,
                         intrinsics: Optional[torch.Tensor] = None,
                         return_aux: bool = False) -> Union[torch.Tensor, dict[str, Optional[torch.Tensor]]]:
        """One action chunk: [B, num_actions, D] post-processed (sigmoid / delta / trim applied).

        ``noise`` [B, num_actions, Dm] replaces the single ``torch.randn`` draw. With skill
        heads and ``skill_id=None`` the skill is the classifier's argmax. ``return_aux=True``
        returns ``{"actions", "skill_logits", "skill_id", "progress"}`` (progress of the chosen
        skill, [B]; None entries for models without skill heads).
        """
        self.eval()
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        b = input_ids.shape[0]
        if proprio.dim() != 2 or proprio.shape[0] != b:
            raise ValueError(f"proprio must be [B, D] with B = {b}, got shape {tuple(proprio.shape)}")
        if domain_id.shape != (b,):
            raise ValueError(f"domain_id must be [B] with B = {b}, got shape {tuple(domain_id.shape)}")
        dm = self.action_space.model_dim
        enc = self.forward_vlm(input_ids, image_input, image_mask)

        skill_logits = progress = None
        if self.skill_heads is not None:
            heads = self.skill_heads(enc["vlm_features"])
            skill_logits = heads["skill_logits"]
            if skill_id is None:
                skill_id = skill_logits.argmax(dim=-1)
            progress = select_skill(heads["progress"], skill_id)

        geometry_tokens = None
        if extrinsics is not None or self.geometry_conditioner is not None:  # once per chunk
            if (extrinsics is None) != (intrinsics is None):
                raise ValueError("extrinsics and intrinsics must be given together")
            geometry_tokens = self.compute_geometry_tokens(image_input, extrinsics, intrinsics)

        if noise is None:
            noise = torch.randn(b, self.num_actions, dm, device=proprio.device, dtype=proprio.dtype)
        elif tuple(noise.shape) != (b, self.num_actions, dm):
            raise ValueError(f"noise must have shape {(b, self.num_actions, dm)}, got {tuple(noise.shape)}")
        x1 = noise
        action = torch.zeros_like(x1)
        for i in range(steps, 0, -1):
            t = torch.full((b,), i / steps, device=proprio.device, dtype=proprio.dtype)
            x_t = x1 * t.view(-1, 1, 1) + action * (1 - t).view(-1, 1, 1)
            proprio_m, x_t_m = self.action_space.preprocess(proprio, x_t)
            action = self.transformer(domain_id=domain_id, action_with_noise=x_t_m, proprio=proprio_m, t=t,
                                      vlm_features=enc["vlm_features"], aux_visual_inputs=enc["aux_visual_inputs"],
                                      task_id=task_id, skill_id=skill_id, geometry_tokens=geometry_tokens)
        actions = self.action_space.postprocess(action, proprio)
        if not return_aux:
            return actions
        return {"actions": actions, "skill_logits": skill_logits, "skill_id": skill_id, "progress": progress}
