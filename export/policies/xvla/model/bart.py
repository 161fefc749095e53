"""The BART encoder of Florence-2 (Lewis et al., 2019), encoder half only.

Post-LN layers: ``h = LN(h + attn(h)); h = LN(h + fc2(act(fc1(h))))``. Learned positions with
BART's offset of 2 (``embed_positions.weight`` has ``max_position_embeddings + 2`` rows) and a
``layernorm_embedding`` on the input. X-VLA feeds ``inputs_embeds`` directly (image tokens of
view 0 followed by the text embeddings) with an all-ones attention mask, so this encoder has
no mask at all: pad tokens are attended, exactly like the official model (README §7.7-9).

Attention is ``scaled_dot_product_attention`` with BART's ``head_dim ** -0.5`` scale: the same
softmax(q k^T / sqrt(hd)) v as the official eager code (float32 results within the goldens'
tolerances, tests/conformance), and on a GPU PyTorch picks its flash / memory-efficient kernels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from xvla.export.policies.xvla.model.config import BartEncoderConfig

_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
    "swish": lambda: nn.SiLU(),
}


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"text_config.activation_function {name!r} is not supported; known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class LearnedPositions(nn.Embedding):
    """Positions 0..L-1 looked up at rows 2..L+1 (BART's offset)."""

    OFFSET = 2

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__(max_positions + self.OFFSET, dim)

    def forward(self, seq_len: int) -> torch.Tensor:  # type: ignore[override]
        positions = torch.arange(seq_len, device=self.weight.device) + self.OFFSET
        return super().forward(positions)  # [L, D]


class BartSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[1], x.shape[2]

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, h, L, hd]
            return t.reshape(-1, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                             scale=self.scaling)  # softmax(q k^T * scaling) v
        out = out.transpose(1, 2).reshape(-1, n, d)
        return self.out_proj(out)


class BartEncoderLayer(nn.Module):
    def __init__(self, cfg: BartEncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.dropout = cfg.dropout
        self.activation_dropout = cfg.activation_dropout
        self.self_attn = BartSelfAttention(d, cfg.encoder_attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.activation_fn = activation(cfg.activation_function)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = F.dropout(self.self_attn(h), p=self.dropout, training=self.training)
        h = self.self_attn_layer_norm(h + a)
        f = F.dropout(self.activation_fn(self.fc1(h)), p=self.activation_dropout, training=self.training)
        f = F.dropout(self.fc2(f), p=self.dropout, training=self.training)
        return self.final_layer_norm(h + f)


class BartEncoder(nn.Module):
    """``inputs_embeds`` [B, L, D] -> encoder states [B, L, D].

    ``embed_tokens`` is the SAME module as the language model's ``shared`` embedding (tied);
    it is only used by :meth:`embed` and is stored once in checkpoints.
    """

    def __init__(self, cfg: BartEncoderConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = embed_tokens
        self.embed_positions = LearnedPositions(cfg.max_position_embeddings, cfg.d_model)
        self.layers = nn.ModuleList([BartEncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(cfg.d_model)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        seq_len = inputs_embeds.shape[1]
        if seq_len > self.cfg.max_position_embeddings:
            raise ValueError(f"encoder input has {seq_len} tokens, more than "
                             f"text_config.max_position_embeddings={self.cfg.max_position_embeddings}")
        h = self.layernorm_embedding(inputs_embeds + self.embed_positions(seq_len))
        h = F.dropout(h, p=self.cfg.dropout, training=self.training)
        for layer in self.layers:
            h = layer(h)
        return h


class BartLanguageModel(nn.Module):
    """Key container matching ``Florence2LanguageModel`` minus the decoder: ``shared`` + ``encoder``."""

    def __init__(self, cfg: BartEncoderConfig) -> None:
        super().__init__()
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.encoder = BartEncoder(cfg, self.shared)


class BartForConditionalGenerationEncoderOnly(nn.Module):
    """Key container matching ``Florence2LanguageForConditionalGeneration`` after X-VLA deletes
    ``lm_head`` and the decoder: ``model.*`` plus the (unused) ``final_logits_bias`` buffer,
    which official checkpoints store."""

    def __init__(self, cfg: BartEncoderConfig) -> None:
        super().__init__()
        self.model = BartLanguageModel(cfg)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared
