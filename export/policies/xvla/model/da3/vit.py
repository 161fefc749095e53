"""DA3's DINOv2 ViT/14 (`DinoVisionTransformer`) with the alternating local/global schedule.

Tokens are kept as [B, S, N, C] (S views, N = 1 + h*w: token 0 is CLS, later the camera token).
Block i attends per view ("local") if i < alt_start or i is even, otherwise across all views
("global", tokens of all views concatenated view-major). QK-norm from `qknorm_start`, 2-D RoPE
from `rope_start`. Immediately before block `alt_start` token 0 of every view is replaced by the
camera token.

Export notes: no data-dependent Python branch is taken on the forward path (reference-view
selection in unposed mode is done with tensor ops, see `_reference_view_onehot`), token 0 is
replaced with `torch.cat` instead of in-place indexing, and RoPE tables / the position-embedding
resize depend on static shapes only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xvla.export.policies.xvla.model.da3.config import DA3Config
from xvla.export.policies.xvla.model.da3.layers import Block, RopeTables
from xvla.export.policies.xvla.model.da3.pos_embed import resize_pos_embed
from xvla.export.policies.xvla.model.da3.rope import grid_positions, rope_tables

# Unposed mode with at least this many views picks a reference view (upstream constant).
THRESH_FOR_REF_SELECTION = 3


class PatchEmbed(nn.Module):
    """14x14 stride-14 convolution, flattened to tokens (`patch_embed.proj`)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, h*w, C]


class VisionTransformer(nn.Module):
    """The `backbone.pretrained` module: parameters and key names of `DinoVisionTransformer`."""

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        if cfg.alt_start != -1:
            # [reference-view token, other-view token], used only when no pose is given
            self.camera_token = nn.Parameter(torch.randn(1, 2, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_embed_grid**2 + 1, c))
        self.blocks = nn.ModuleList(
            Block(
                c,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                init_values=cfg.init_values,
                qk_norm=cfg.qknorm_start != -1 and i >= cfg.qknorm_start,
                ffn_layer=cfg.ffn_layer,
                ln_eps=1e-6,
            )
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(c)  # eps 1e-5, unlike the blocks' 1e-6
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    # ------------------------------------------------------------------ schedule
    def is_global(self, i: int) -> bool:
        a = self.cfg.alt_start
        return a != -1 and i >= a and i % 2 == 1

    def uses_rope(self, i: int) -> bool:
        r = self.cfg.rope_start
        return r != -1 and self.cfg.rope_freq > 0 and i >= r

    # ------------------------------------------------------------------ pieces
    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, S, 3, H, W] -> [B, S, 1 + h*w, C]: patches, CLS prepended, position embedding added."""
        b, s, _, h, w = images.shape
        rows, cols = h // self.patch_size, w // self.patch_size
        if rows * self.patch_size != h or cols * self.patch_size != w:
            raise ValueError(f"DA3 input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        x = self.patch_embed(images.reshape(b * s, *images.shape[2:]))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + resize_pos_embed(self.pos_embed, rows, cols, self.cfg.interpolate_offset)
        return x.reshape(b, s, x.shape[1], x.shape[2])

    def _rope(self, rows: int, cols: int, views: int, dtype: torch.dtype, device: torch.device) -> tuple[RopeTables, RopeTables]:
        """(local, global) cos/sin tables; global repeats the per-view 'no-diff' positions S times."""
        hd, base = self.cfg.head_dim, float(self.cfg.rope_freq)
        local = rope_tables(grid_positions(rows, cols, collapse_patches=False), hd, base, dtype)
        glob = rope_tables(np.tile(grid_positions(rows, cols, collapse_patches=True), (views, 1)), hd, base, dtype)
        return (
            (local[0].to(device), local[1].to(device)),
            (glob[0].to(device), glob[1].to(device)),
        )

    def _unposed_camera_tokens(self, x: torch.Tensor, select_reference: bool) -> torch.Tensor:
        """Camera tokens without a pose: the reference view gets `camera_token[0]`, others `[1]`.

        Upstream moves the reference view to the front; every later operation is equivariant to
        the view order (global RoPE carries no view index), so we write the reference token in
        place instead of reordering. Output features therefore stay in input order (upstream
        returns the aux features reordered; the X-VLA resampler is order-invariant).
        """
        b, s = x.shape[:2]
        ref, src = self.camera_token[:, 0], self.camera_token[:, 1]  # [1, C]
        if not select_reference:
            onehot = F.one_hot(torch.zeros(b, dtype=torch.long, device=x.device), s).to(x.dtype)
        else:
            onehot = _reference_view_onehot(x).to(x.dtype)  # [B, S]
        w = onehot[..., None]
        return w * ref[:, None] + (1 - w) * src[:, None]  # [B, S, C]

    # ------------------------------------------------------------------ forward
    def run(
        self, images: torch.Tensor, cam_token: torch.Tensor | None, keep: Sequence[int]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Run blocks 0..max(keep); return {i: (x_i, local_x_i)} for i in keep (each [B, S, N, C]).

        `local_x_i` is the un-normalised output of the most recent local block (x_i itself when
        block i is local): what `cat_token` concatenates. Blocks after max(keep) cannot affect
        the kept outputs, so they are not run.
        """
        cfg = self.cfg
        b, s, _, h, w = images.shape
        rows, cols = h // self.patch_size, w // self.patch_size
        x = self.prepare_tokens(images)
        n, c = x.shape[2], x.shape[3]
        need_rope = any(self.uses_rope(i) for i in range(max(keep) + 1))
        local_rope, global_rope = self._rope(rows, cols, s, x.dtype, x.device) if need_rope else (None, None)
        ref_tokens: torch.Tensor | None = None
        local_x = x
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in range(max(keep) + 1):
            if cfg.alt_start != -1 and cam_token is None and i == cfg.alt_start - 1:
                ref_tokens = self._unposed_camera_tokens(x, select_reference=s >= THRESH_FOR_REF_SELECTION)
            if cfg.alt_start != -1 and i == cfg.alt_start:
                if cam_token is not None:
                    token0 = cam_token
                elif ref_tokens is not None:
                    token0 = ref_tokens
                else:  # alt_start == 0: upstream selects nothing, the first view is the reference
                    token0 = self._unposed_camera_tokens(x, select_reference=False)
                # Upstream writes in place, which also changes the aliased local_x (the previous
                # block's output): keep both pointing at the same updated tokens.
                x = torch.cat((token0[:, :, None].to(x.dtype), x[:, :, 1:]), dim=2)
                local_x = x
            blk = self.blocks[i]
            if self.is_global(i):
                rope = global_rope if self.uses_rope(i) else None
                x = blk(x.reshape(b, s * n, c), rope).reshape(b, s, n, c)
            else:
                rope = local_rope if self.uses_rope(i) else None
                x = blk(x.reshape(b * s, n, c), rope).reshape(b, s, n, c)
                local_x = x
            if i in keep:
                out[i] = (x, local_x)
        return out

    def features(
        self, images: torch.Tensor, cam_token: torch.Tensor | None, layers: Sequence[int]
    ) -> list[torch.Tensor]:
        """`export_feat_layers`: norm(x_i) without token 0, as [B, S, h, w, C] per requested block."""
        b, s, _, h, w = images.shape
        rows, cols = h // self.patch_size, w // self.patch_size
        taps = self.run(images, cam_token, layers)
        return [self.norm(taps[i][0])[:, :, 1:].reshape(b, s, rows, cols, -1) for i in layers]

    def intermediate_layers(
        self, images: torch.Tensor, cam_token: torch.Tensor | None, layers: Sequence[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`get_intermediate_layers` for `out_layers`: (patch tokens [B,S,h*w,C'], camera token [B,S,C']).

        With `cat_token`, C' = 2C: `cat(local_x, norm(x))`; the camera token is token 0 of
        `cat(local_x, x)` before any norm.
        """
        layers = list(self.cfg.out_layers if layers is None else layers)
        taps = self.run(images, cam_token, layers)
        result = []
        for i in layers:
            x, local_x = taps[i]
            if self.cfg.cat_token:
                tokens = torch.cat((local_x, self.norm(x)), dim=-1)
                camera = torch.cat((local_x, x), dim=-1)[:, :, 0]
            else:
                tokens, camera = self.norm(x), x[:, :, 0]
            result.append((tokens[:, :, 1:], camera))
        return result


def _reference_view_onehot(x: torch.Tensor) -> torch.Tensor:
    """Upstream 'saddle_balanced' reference view as a one-hot [B, S] (no data-dependent branch).

    Scores each view's token 0 by how close its mean similarity to the other views, its norm and
    its channel variance are to the middle of the batch's range; picks the most balanced.
    """
    b, s = x.shape[:2]
    tok = x[:, :, 0]  # [B, S, C]
    unit = tok / tok.norm(dim=-1, keepdim=True)
    sim = unit @ unit.transpose(1, 2) - torch.eye(s, device=x.device, dtype=x.dtype)[None]
    sim_score = sim.sum(dim=-1) / (s - 1)

    def normalise(m: torch.Tensor) -> torch.Tensor:
        lo = m.min(dim=1, keepdim=True).values
        hi = m.max(dim=1, keepdim=True).values
        return (m - lo) / (hi - lo + 1e-8)

    balance = (
        (normalise(sim_score) - 0.5).abs()
        + (normalise(tok.norm(dim=-1)) - 0.5).abs()
        + (normalise(unit.var(dim=-1)) - 0.5).abs()
    )
    return F.one_hot(balance.argmin(dim=1), s)
