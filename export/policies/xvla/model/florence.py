"""The Florence-2 encoder as X-VLA uses it (``model.vlm``): DaViT + image projection + BART encoder.

``forward_vlm`` (README §7.5-7.9):
1. every view of every sample goes through DaViT -> stage-4 tokens [N, h*w, C];
2. + learned 2-D position ``concat(column_emb[j], row_emb[i])`` + cosine temporal row 0;
3. tokens = [mean token ; h*w tokens] (``image_feature_source``) @ ``image_projection`` -> LayerNorm;
4. masked views become exact zeros (``torch.where`` on the mask: the export-friendly
   equivalent of the official boolean-mask gather, same values);
5. BART encoder over [view-0 image tokens ; shared(input_ids)] (no sqrt(d) scale: the
   official path looks tokens up in ``shared`` directly), all tokens attended;
6. views 1..V-1 skip the encoder and become ``aux_visual_inputs``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from xvla.export.policies.xvla.model.bart import BartForConditionalGenerationEncoderOnly
from xvla.export.policies.xvla.model.config import FlorenceConfig
from xvla.export.policies.xvla.model.davit import DaViT


class LearnedAbsolutePositionEmbedding2D(nn.Module):
    """pos[i, j] = concat(column_embeddings[j], row_embeddings[i]) -- column first."""

    def __init__(self, dim: int, num_pos: int) -> None:
        super().__init__()
        self.row_embeddings = nn.Embedding(num_pos, dim // 2)
        self.column_embeddings = nn.Embedding(num_pos, dim - dim // 2)

    def forward(self, h: int, w: int) -> torch.Tensor:
        device = self.row_embeddings.weight.device
        col = self.column_embeddings(torch.arange(w, device=device))  # [w, C-C/2]
        row = self.row_embeddings(torch.arange(h, device=device))  # [h, C/2]
        return torch.cat([col.unsqueeze(0).expand(h, w, -1), row.unsqueeze(1).expand(h, w, -1)], dim=-1)  # [h,w,C]


class CosineTemporalEmbedding(nn.Module):
    """Sinusoidal table [T, C] (sin on even channels, cos on odd); X-VLA uses only row 0 (T=1).

    Stored as a buffer because official checkpoints carry it.
    """

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        # Built on the CPU even inside a ``torch.device("meta")`` build: it is a constant, and
        # meta-device arithmetic would pull in torch's compiler stack for nothing.
        cpu = torch.device("cpu")
        denom = torch.exp(-math.log(10000) * torch.arange(0, dim, 2, device=cpu) / dim)
        freqs = torch.arange(0, max_len, device=cpu).reshape(max_len, 1) * denom
        table = torch.zeros(max_len, dim, device=cpu)
        table[:, 0::2] = torch.sin(freqs)
        table[:, 1::2] = torch.cos(freqs)
        self.register_buffer("pos_idx_to_embed", table)

    def forward(self, num_frames: int) -> torch.Tensor:
        return self.pos_idx_to_embed[:num_frames]  # [T, C]


class Florence2Encoder(nn.Module):
    """Module paths match ``Florence2ForConditionalGeneration`` minus decoder/lm_head (``vlm.*``)."""

    def __init__(self, cfg: FlorenceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        v = cfg.vision_config
        c = v.dim_embed[-1]
        self.vision_tower = DaViT(v)
        # [C_last, P] used as ``x @ W`` (in-major, unlike nn.Linear).
        self.image_projection = nn.Parameter(torch.empty(c, v.projection_dim))
        nn.init.trunc_normal_(self.image_projection, std=c ** -0.5)
        self.image_proj_norm = nn.LayerNorm(v.projection_dim)
        self.image_pos_embed = LearnedAbsolutePositionEmbedding2D(c, v.image_pos_embed["max_pos_embeddings"])
        self.visual_temporal_embed = CosineTemporalEmbedding(c, v.visual_temporal_embedding["max_temporal_embeddings"])
        self.language_model = BartForConditionalGenerationEncoderOnly(cfg.text_config)

    # -- parts --------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.model.shared

    @property
    def encoder(self) -> nn.Module:
        return self.language_model.model.encoder

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] (normalised) -> image tokens [N, 1 + h*w, P] (50 at 224x224)."""
        x = self.vision_tower.forward_features_unpool(pixel_values)  # [N, h*w, C]
        n_tok, c = x.shape[1], x.shape[2]
        side = math.isqrt(n_tok)
        if side * side != n_tok:
            raise ValueError(f"image_input: DaViT produced {n_tok} tokens, only square feature maps are supported")
        pos = self.image_pos_embed(side, side).reshape(1, n_tok, c)
        x = x + pos
        x = x + self.visual_temporal_embed(1).reshape(1, 1, c)  # T = 1
        feats = {
            "spatial_avg_pool": x.mean(dim=1, keepdim=True),  # [N, 1, C]
            "temporal_avg_pool": x,  # mean over T=1 frames
            "last_frame": x,
        }
        x = torch.cat([feats[s] for s in self.cfg.vision_config.image_feature_source], dim=1)
        return self.image_proj_norm(x @ self.image_projection)  # [N, 1+h*w, P]

    # -- whole encoder ------------------------------------------------------------------
    def forward_vlm(self, input_ids: torch.Tensor, image_input: torch.Tensor,
                    image_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """input_ids [B, L] int64, image_input [B, V, 3, H, W], image_mask [B, V] bool (True = present)
        -> {"vlm_features": [B, N+L, P], "aux_visual_inputs": [B, (V-1)*N, P]}."""
        if image_input.dim() != 5:
            raise ValueError(f"image_input must be [B, V, 3, H, W], got shape {tuple(image_input.shape)}")
        if image_mask.shape != image_input.shape[:2]:
            raise ValueError(f"image_mask shape {tuple(image_mask.shape)} != image_input[:2] "
                             f"{tuple(image_input.shape[:2])}")
        if input_ids.dim() != 2 or input_ids.shape[0] != image_input.shape[0]:
            raise ValueError(f"input_ids must be [B, L] with B = {image_input.shape[0]}, "
                             f"got shape {tuple(input_ids.shape)}")
        b, v = image_input.shape[0], image_input.shape[1]
        feats = self.encode_image(image_input.flatten(0, 1))  # [B*V, N, P]
        n, p = feats.shape[1], feats.shape[2]
        feats = feats.reshape(b, v, n, p)
        keep = image_mask.to(torch.bool).reshape(b, v, 1, 1)
        feats = torch.where(keep, feats, torch.zeros_like(feats))  # absent views: exact zeros
        text = self.get_input_embeddings()(input_ids)  # [B, L, P]
        enc = self.encoder(torch.cat([feats[:, 0], text], dim=1))  # [B, N+L, P]
        aux = feats[:, 1:].reshape(b, (v - 1) * n, p)
        return {"vlm_features": enc, "aux_visual_inputs": aux}

    forward = forward_vlm
