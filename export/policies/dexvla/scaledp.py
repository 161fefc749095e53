"""ScaleDP: the diffusion-transformer action head of DexVLA (DiT with adaLN-Zero blocks).

Our own code (nothing in transformers covers it), written from the official
``policy_heads/modeling_scaledp.py`` semantics:

* condition: ``cond_obs_emb(combine(cat(cond, state)))`` with ``combine`` = Linear(H+S, 1024)-ReLU-
  Linear(1024, 1024)-ReLU-Linear(1024, H); then ``c = t_emb + cond``;
* input: ``x_embedder(a) + pos_embed`` (a learned parameter, not sin-cos);
* blocks: adaLN chunks in the order (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp),
  LayerNorm without affine (eps 1e-6), ``x * (1 + scale) + shift``, unmasked qkv-bias attention,
  GELU(tanh) MLP (timm ``Mlp`` key names ``fc1``/``fc2``);
* final layer: adaLN (shift, scale) + Linear;
* timestep embedding: the frequency table is computed in **bfloat16** as the official code does
  (``arange``/``*``/``/``/``exp`` in bf16), then ``t.float() * freqs`` in fp32 and ``cat([cos, sin])``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xvla.export.policies.dexvla.config import ScaleDPConfig

FREQ_EMBED_DIM = 256
COMBINE_WIDTH = 1024  # hard-coded in the official head


def bf16_frequency_table(dim: int = FREQ_EMBED_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """(dim/2,) frequencies computed in bf16 exactly as the official ``timestep_embedding`` does."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.bfloat16) / half)


def timestep_frequencies(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """t: (B,) int -> (B, dim) = [cos(t*f), sin(t*f)] in fp32 (bf16 table promoted)."""
    args = t[:, None].float() * freqs[None].to(t.device)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal (bf16 table) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_EMBED_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.register_buffer("freqs", bf16_frequency_table(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, hidden)
        t_freq = timestep_frequencies(t, self.freqs).to(self.mlp[0].weight.dtype)
        return self.mlp(t_freq)


class Attention(nn.Module):
    """Plain multi-head self-attention with qkv bias (timm layout), no mask."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ScaleDP n_emb {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, T, head_dim) each
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (timm ``Mlp`` key names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, T, D); shift/scale: (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ScaleDPBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x (B,T,D), c (B,D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (B,T,D) -> (B,T,out)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ScaleDP(nn.Module):
    """The denoiser eps(x_t, t | cond, state); sampling lives in ``sampler.py``."""

    def __init__(self, cfg: ScaleDPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.combine = nn.Sequential(
            nn.Linear(cfg.cond_dim + cfg.state_dim, COMBINE_WIDTH), nn.ReLU(),
            nn.Linear(COMBINE_WIDTH, COMBINE_WIDTH), nn.ReLU(),
            nn.Linear(COMBINE_WIDTH, cfg.cond_dim),
        )
        self.x_embedder = nn.Linear(cfg.input_dim, cfg.n_emb)
        self.t_embedder = TimestepEmbedder(cfg.n_emb)
        self.cond_obs_emb = nn.Linear(cfg.cond_dim, cfg.n_emb)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.prediction_horizon, cfg.n_emb))
        self.blocks = nn.ModuleList(ScaleDPBlock(cfg.n_emb, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.n_emb, cfg.output_dim)

    def condition(self, cond: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """cond (B, 1, H) or (B, H), states (B, S) -> (B, n_emb); constant over the denoising steps."""
        cond = cond.reshape(cond.shape[0], -1)
        return self.cond_obs_emb(self.combine(torch.cat([cond, states.to(cond.dtype)], dim=-1)))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond_emb: torch.Tensor) -> torch.Tensor:
        """x (B, T, A) noisy actions, t (B,) or 0-d int timesteps, cond_emb (B, n_emb) -> eps (B, T, A)."""
        if t.dim() == 0:
            t = t[None]
        t = t.to(x.device).expand(x.shape[0]) if t.shape[0] == 1 else t.to(x.device)
        h = self.x_embedder(x) + self.pos_embed.to(dtype=x.dtype)  # (B, T, n_emb)
        c = self.t_embedder(t) + cond_emb  # (B, n_emb)
        for block in self.blocks:
            h = block(h, c)
        return self.final_layer(h, c)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The official ``model_forward``."""
        return self.denoise(x, t, self.condition(cond, states))
