"""The X-VLA action head: a soft-prompted, domain-aware transformer run once per denoising step.

Sequence (README §7.10-7.16)::

    time  = [cos(t f) | sin(t f)],  f = exp(-ln(100) * arange(dim_time/2) / (dim_time/2))   # raw t in (0, 1]
    act   = action_encoder(cat[x_t, proprio, time], domain)          # [B, T, H]  (DomainAwareLinear)
    x     = cat[act, vlm_proj(vlm_features), aux_visual_proj(aux)] + pos_emb[:len]
    x     = cat[x, prompts]                                           # soft prompts get NO pos_emb
    x     = geometry_fusion(x, geometry_tokens)                       # optional hook (geometry models)
    x     = blocks(x)                                                 # pre-LN, SDPA, GELU-tanh MLP, no mask
    out   = action_decoder(norm(x[:, :T]), domain)                    # raw x0 prediction [B, T, Dm]

Prompts: ``soft_prompt_hub[domain]`` ([B, len_soft_prompts, H]). With v20 skill conditioning
(``config.skill_conditioning``) two more hubs exist, ``task_prompt_hub`` (num_tasks rows) and
``skill_prompt_hub`` (num_skills rows), both ``Embedding(n, len_soft_prompts * hidden)`` and
zero-initialised. ``prompt_mode="add"``: prompts = domain + task[task_id] + skill[skill_id];
``prompt_mode="replace"``: prompts = task[task_id] + skill[skill_id] (the domain prompt is used
only when neither id is given). An id left as None contributes nothing.

Embodiment-specific weights are gathered inside the module from id tensors, so one exported
graph serves every domain, task and skill.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from xvla.export.policies.xvla.model.config import XVLAConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """t [B] in (0, 1] -> [B, dim] laid out [cos | sin] (no x1000 scaling of t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=t.dtype, device=t.device) / half)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class DomainAwareLinear(nn.Module):
    """A linear layer whose weight and bias are picked per sample by an id.

    ``fc.weight[d]`` holds W_d in IN-major order (element ``[d, i*out + o]`` is W_d[i, o]) and
    ``y = x @ W_d + bias.weight[d]``: the transpose of the nn.Linear convention (README §7.12).
    """

    def __init__(self, input_size: int, output_size: int, num_domains: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.fc = nn.Embedding(num_domains, output_size * input_size)
        self.bias = nn.Embedding(num_domains, output_size)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, domain_id: torch.Tensor) -> torch.Tensor:
        """x [B, T, in] or [B, in], domain_id [B] int64 -> [B, T, out] or [B, out]."""
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(1)
        w = self.fc(domain_id).reshape(-1, self.input_size, self.output_size)  # [B, in, out]
        b = self.bias(domain_id).reshape(-1, 1, self.output_size)  # [B, 1, out]
        y = torch.matmul(x, w) + b
        return y.squeeze(1) if squeeze else y


class Attention(nn.Module):
    """Multi-head self-attention, qkv with bias, fused SDPA, no mask."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.1, proj_drop: float = 0.1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, hd]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(-1, n, c)))


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x += attn(LN1(x)); x += mlp(LN2(x))``."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, num_heads)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SoftPromptedTransformer(nn.Module):
    """The action head; see the module docstring for the sequence layout."""

    def __init__(self, hidden_size: int, multi_modal_input_size: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_domains: int, dim_action: int, dim_proprio: int, dim_time: int = 32,
                 len_soft_prompts: int = 32, max_len_seq: int = 512, use_hetero_proj: bool = False,
                 num_tasks: int = 0, num_skills: int = 0, prompt_mode: str = "add") -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.dim_action = dim_action
        self.dim_time = dim_time
        self.len_soft_prompts = len_soft_prompts
        self.use_hetero_proj = use_hetero_proj
        self.prompt_mode = prompt_mode

        self.blocks = nn.ModuleList([TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        if use_hetero_proj:
            self.vlm_proj = DomainAwareLinear(multi_modal_input_size, hidden_size, num_domains)
            self.aux_visual_proj = DomainAwareLinear(multi_modal_input_size, hidden_size, num_domains)
        else:
            self.vlm_proj = nn.Linear(multi_modal_input_size, hidden_size)
            self.aux_visual_proj = nn.Linear(multi_modal_input_size, hidden_size)
        self.pos_emb = nn.Parameter(torch.zeros(1, max_len_seq, hidden_size))
        self.norm = nn.LayerNorm(hidden_size)
        self.action_encoder = DomainAwareLinear(dim_action + dim_proprio + dim_time, hidden_size, num_domains)
        self.action_decoder = DomainAwareLinear(hidden_size, dim_action, num_domains)
        if len_soft_prompts > 0:
            self.soft_prompt_hub = nn.Embedding(num_domains, len_soft_prompts * hidden_size)
        # v20 skill conditioning: zero-initialised so a fresh hub leaves the base model unchanged.
        self.task_prompt_hub: Optional[nn.Embedding] = None
        self.skill_prompt_hub: Optional[nn.Embedding] = None
        if num_tasks > 0 or num_skills > 0:
            if len_soft_prompts <= 0:
                raise ValueError("task/skill prompts need len_soft_prompts > 0")
            self.task_prompt_hub = nn.Embedding(num_tasks, len_soft_prompts * hidden_size)
            self.skill_prompt_hub = nn.Embedding(num_skills, len_soft_prompts * hidden_size)
        # Geometry hook (DA3 models): a module ``fusion(x [B, S, H], geometry_tokens [B, K, H]) -> [B, S, H]``
        # set by the geometry code; applied once, after the prompts are appended and before block 0.
        self.geometry_fusion: Optional[nn.Module] = None
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: XVLAConfig, dim_action: int, dim_proprio: int) -> "SoftPromptedTransformer":
        return cls(hidden_size=cfg.hidden_size, multi_modal_input_size=cfg.florence_config.projection_dim,
                   depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, num_domains=cfg.num_domains,
                   dim_action=dim_action, dim_proprio=dim_proprio, dim_time=cfg.dim_time,
                   len_soft_prompts=cfg.len_soft_prompts, max_len_seq=cfg.max_len_seq,
                   use_hetero_proj=cfg.use_hetero_proj,
                   num_tasks=cfg.num_tasks if cfg.skill_conditioning else 0,
                   num_skills=cfg.num_skills if cfg.skill_conditioning else 0, prompt_mode=cfg.prompt_mode)

    def _init_weights(self) -> None:
        """Official recipe: xavier Linear / zero bias, N(0, 0.02) positions and domain prompts."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_emb, std=0.02)
        if self.len_soft_prompts > 0:
            nn.init.normal_(self.soft_prompt_hub.weight, std=0.02)
        for hub in (self.task_prompt_hub, self.skill_prompt_hub):
            if hub is not None:
                nn.init.zeros_(hub.weight)

    def prompts(self, domain_id: torch.Tensor, task_id: Optional[torch.Tensor],
                skill_id: Optional[torch.Tensor]) -> torch.Tensor:
        """The prompt tokens appended after the position embedding: [B, len_soft_prompts, H]."""
        shape = (-1, self.len_soft_prompts, self.hidden_size)
        extra = []
        if task_id is not None or skill_id is not None:
            if self.task_prompt_hub is None:
                raise ValueError("task_id/skill_id given but the model has no task/skill prompt hubs "
                                 "(config.skill_conditioning is False)")
            if task_id is not None:
                extra.append(self.task_prompt_hub(task_id).reshape(shape))
            if skill_id is not None:
                extra.append(self.skill_prompt_hub(skill_id).reshape(shape))
        if self.prompt_mode == "replace" and extra:
            p = extra[0]
            for e in extra[1:]:
                p = p + e
            return p
        p = self.soft_prompt_hub(domain_id).reshape(shape)
        for e in extra:
            p = p + e
        return p

    def forward(self, domain_id: torch.Tensor, vlm_features: torch.Tensor, aux_visual_inputs: torch.Tensor,
                action_with_noise: torch.Tensor, proprio: torch.Tensor, t: torch.Tensor,
                task_id: Optional[torch.Tensor] = None, skill_id: Optional[torch.Tensor] = None,
                geometry_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """domain_id [B] int64, vlm_features [B, Nv, P], aux_visual_inputs [B, Na, P],
        action_with_noise [B, T, Dm], proprio [B, Dm], t [B] -> raw x0 prediction [B, T, Dm]."""
        num_actions = action_with_noise.shape[1]
        time_emb = timestep_embedding(t, self.dim_time)  # [B, dim_time]
        tokens = torch.cat([
            action_with_noise,
            proprio.unsqueeze(1).expand(-1, num_actions, -1),
            time_emb.unsqueeze(1).expand(-1, num_actions, -1),
        ], dim=-1)  # [B, T, Dm + Dm + dim_time]
        x = self.action_encoder(tokens, domain_id)  # [B, T, H]
        if self.use_hetero_proj:
            vlm = self.vlm_proj(vlm_features, domain_id)
            aux = self.aux_visual_proj(aux_visual_inputs, domain_id)
        else:
            vlm, aux = self.vlm_proj(vlm_features), self.aux_visual_proj(aux_visual_inputs)
        x = torch.cat([x, vlm, aux], dim=1)  # [B, T + Nv + Na, H]
        seq_len = x.shape[1]
        if seq_len > self.pos_emb.shape[1]:
            raise ValueError(f"sequence length {seq_len} exceeds max_len_seq={self.pos_emb.shape[1]}")
        x = x + self.pos_emb[:, :seq_len]
        if self.len_soft_prompts > 0:
            x = torch.cat([x, self.prompts(domain_id, task_id, skill_id)], dim=1)  # + len_soft_prompts
        if geometry_tokens is not None and self.geometry_fusion is not None:
            x = self.geometry_fusion(x, geometry_tokens)
        for block in self.blocks:
            x = block(x)
        return self.action_decoder(self.norm(x[:, :num_actions]), domain_id)
