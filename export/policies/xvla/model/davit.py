"""DaViT, the Florence-2 vision tower (Ding et al., "DaViT: Dual Attention Vision Transformers").

Four stages; each stage is a patch-embedding conv followed by ``depths[i]`` pairs of
(SpatialBlock: window attention, ChannelBlock: channel-group attention). Module paths equal
the official ones (``convs.{i}.proj``, ``blocks.{i}.{j}.spatial_block.window_attn.fn.qkv``, ...)
so official checkpoints load by key name.

Quirks kept on purpose (goldens README §7, items 1-4):
* stage 0 normalises AFTER its conv, stages 1-3 BEFORE (over the input channels);
* every sub-block is ``x += dwconv3x3(x); x += attn(LN(x)); x += dwconv3x3(x); x += mlp(LN(x))``;
* window attention zero-pads the normalised map right/bottom to a multiple of the window
  and lets the padding act as keys/values without a mask;
* channel attention scales q by ``N ** -0.5`` (N = spatial tokens), not by the head width.

Shapes are static except the batch axis, which is never read back into Python, so the tower
exports with a dynamic batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from xvla.export.policies.xvla.model.config import DaViTConfig

Size = tuple[int, int]


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (identity in eval)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Residual(nn.Module):
    """``x + drop_path(fn(norm(x)))``; ``norm`` may be absent (the depth-wise conv units)."""

    def __init__(self, fn: nn.Module, norm: nn.Module | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = norm
        self.fn = fn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        h = self.norm(x) if self.norm is not None else x
        return x + self.drop_path(self.fn(h, size))


class DepthWiseConv(nn.Module):
    """3x3 depth-wise conv over the token map (a conditional position encoding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, stride=1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        h, w = size
        c = x.shape[-1]
        y = self.dw(x.transpose(1, 2).reshape(-1, c, h, w))  # [B, C, H, W]
        return y.flatten(2).transpose(1, 2)  # [B, H*W, C]


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (keys ``net.fc1`` / ``net.fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential()
        self.net.add_module("fc1", nn.Linear(dim, hidden))
        self.net.add_module("act", nn.GELU())
        self.net.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return self.net(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``window x window`` patches."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = float(dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        h, w = size
        c = x.shape[-1]
        ws = self.window_size
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        hp, wp = h + pad_b, w + pad_r
        x = F.pad(x.reshape(-1, h, w, c), (0, 0, 0, pad_r, 0, pad_b))  # [B, Hp, Wp, C], zeros
        # partition: [B, Hp/ws, ws, Wp/ws, ws, C] -> [B*nW, ws*ws, C]
        x = x.reshape(-1, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        n = ws * ws
        qkv = self.qkv(x).reshape(-1, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, n, hd]
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax(q k^T * scale) v
        x = x.transpose(1, 2).reshape(-1, n, c)
        x = self.proj(x)
        # reverse: [B*nW, ws*ws, C] -> [B, Hp, Wp, C] -> crop -> [B, H*W, C]
        x = x.reshape(-1, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
        return x[:, :h, :w, :].reshape(-1, h * w, c)


class ChannelAttention(nn.Module):
    """Attention across channels within ``groups`` channel groups (global over space)."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.groups, c // self.groups).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, G, N, Cg]
        # softmax(q^T k / sqrt(N)) v^T over channels: attention with channels as the sequence axis
        x = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2),
                                           scale=float(n) ** -0.5)  # [B, G, Cg, N]
        x = x.transpose(-1, -2)  # [B, G, N, Cg]
        return self.proj(x.transpose(1, 2).reshape(-1, n, c))


class SpatialBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.conv1 = Residual(DepthWiseConv(dim))
        self.window_attn = Residual(WindowAttention(dim, num_heads, window_size), nn.LayerNorm(dim), drop_path)
        self.conv2 = Residual(DepthWiseConv(dim))
        self.ffn = Residual(Mlp(dim, int(dim * mlp_ratio)), nn.LayerNorm(dim), drop_path)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = self.conv1(x, size)
        x = self.window_attn(x, size)
        x = self.conv2(x, size)
        return self.ffn(x, size)


class ChannelBlock(nn.Module):
    def __init__(self, dim: int, groups: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.conv1 = Residual(DepthWiseConv(dim))
        self.channel_attn = Residual(ChannelAttention(dim, groups), nn.LayerNorm(dim), drop_path)
        self.conv2 = Residual(DepthWiseConv(dim))
        self.ffn = Residual(Mlp(dim, int(dim * mlp_ratio)), nn.LayerNorm(dim), drop_path)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = self.conv1(x, size)
        x = self.channel_attn(x, size)
        x = self.conv2(x, size)
        return self.ffn(x, size)


class DualAttentionBlock(nn.Module):
    """One depth unit: spatial (window) block then channel block."""

    def __init__(self, dim: int, num_heads: int, groups: int, window_size: int, mlp_ratio: float,
                 drop_path: tuple[float, float]) -> None:
        super().__init__()
        self.spatial_block = SpatialBlock(dim, num_heads, window_size, mlp_ratio, drop_path[0])
        self.channel_block = ChannelBlock(dim, groups, mlp_ratio, drop_path[1])

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return self.channel_block(self.spatial_block(x, size), size)


class ConvEmbed(nn.Module):
    """Patch embedding conv; LayerNorm before it (over input channels) or after it."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(in_ch if pre_norm else out_ch)

    def forward(self, x: torch.Tensor, size: Size) -> tuple[torch.Tensor, Size]:
        if x.dim() == 3:  # tokens [B, H*W, C] from the previous stage
            if self.pre_norm:
                x = self.norm(x)
            x = x.transpose(1, 2).reshape(-1, x.shape[-1], size[0], size[1])
        elif self.pre_norm:  # an image with a pre-norm first stage (not used by Florence-2)
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.proj(x)  # [B, C', H', W']
        new_size = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, H'*W', C']
        if not self.pre_norm:
            x = self.norm(x)
        return x, new_size


class Stage(nn.Sequential):
    """The ``depths[i]`` dual-attention units of one stage (keys ``blocks.{i}.{j}``)."""

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:  # type: ignore[override]
        for unit in self:
            x = unit(x, size)
        return x


class DaViT(nn.Module):
    """Image [B, 3, H, W] -> stage-4 tokens [B, (H/32)*(W/32), dim_embed[-1]] (no pooling, no head)."""

    def __init__(self, cfg: DaViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        total = sum(cfg.depths) * 2
        rates = [cfg.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        convs, blocks, offset = [], [], 0
        for i, dim in enumerate(cfg.dim_embed):
            convs.append(ConvEmbed(3 if i == 0 else cfg.dim_embed[i - 1], dim, cfg.patch_size[i],
                                   cfg.patch_stride[i], cfg.patch_padding[i], cfg.patch_prenorm[i]))
            blocks.append(Stage(*[
                DualAttentionBlock(dim, cfg.num_heads[i], cfg.num_groups[i], cfg.window_size, cfg.mlp_ratio,
                                   (rates[offset + 2 * j], rates[offset + 2 * j + 1]))
                for j in range(cfg.depths[i])
            ]))
            offset += 2 * cfg.depths[i]
        self.convs = nn.ModuleList(convs)
        self.blocks = nn.ModuleList(blocks)

    @property
    def dim_out(self) -> int:
        return self.cfg.dim_embed[-1]

    def forward_features_unpool(self, x: torch.Tensor) -> torch.Tensor:
        size: Size = (x.shape[-2], x.shape[-1])
        for conv, stage in zip(self.convs, self.blocks):
            x, size = conv(x, size)
            x = stage(x, size)
        return x

    forward = forward_features_unpool
