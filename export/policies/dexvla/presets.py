"""Named DexVLA model configurations and seeded random weights (tests, demos, benchmarks).

* ``dexvla-2b-scaledp-h``: the released sizes, Qwen2-VL-2B (DexVLA ``docs/config.json``) + ScaleDP-H as
  ``DexVLAConfig(policy_head_size="scaledp_h")`` builds it (cond 1536, chunk 50, 14-d state/action).
  Its state dict equals the official full-size key manifest (1081 keys, 3,179,012,110 parameters).
* ``dexvla-2b-scaledp-l``: the same VLM with the ScaleDP-L head (depth 24, n_emb 1024).
* ``tiny-dexvla``: a seconds-on-CPU model with the same special-token layout as the conformance tokenizer
  (1000 BPE tokens + the 14 Qwen2-VL specials at 1000..1013), 3 cameras, 14-d state/action, chunk 16.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from xvla.export.policies.dexvla.config import DexVLAConfig, ScaleDPConfig, TextConfig, TokenIds, VisionConfig
from xvla.export.policies.dexvla.model import DexVLAModel

QWEN2VL_TOKENS = TokenIds(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                          vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)
TINY_TOKENS = TokenIds(image_token_id=1012, video_token_id=1013, vision_start_token_id=1009,
                       vision_end_token_id=1010, bos_token_id=1000, eos_token_id=1002)

_QWEN2VL_2B_TEXT = TextConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                              mrope_section=(16, 24, 24), max_position_embeddings=32768)
_QWEN2VL_2B_VISION = VisionConfig(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4.0)


def _scaledp(depth: int, n_emb: int, heads: int, cond: int, chunk: int, dim: int = 14) -> ScaleDPConfig:
    return ScaleDPConfig(input_dim=dim, output_dim=dim, state_dim=dim, cond_dim=cond, prediction_horizon=chunk,
                         n_emb=n_emb, depth=depth, num_heads=heads, mlp_ratio=4.0, num_inference_timesteps=10,
                         num_train_timesteps=100, num_queries=chunk)


PRESETS: dict[str, DexVLAConfig] = {
    "dexvla-2b-scaledp-h": DexVLAConfig(text=_QWEN2VL_2B_TEXT, vision=_QWEN2VL_2B_VISION,
                                        head=_scaledp(32, 1280, 16, 1536, 50), tokens=QWEN2VL_TOKENS,
                                        pad_token_id=151643),
    "dexvla-2b-scaledp-l": DexVLAConfig(text=_QWEN2VL_2B_TEXT, vision=_QWEN2VL_2B_VISION,
                                        head=_scaledp(24, 1024, 16, 1536, 50), tokens=QWEN2VL_TOKENS,
                                        pad_token_id=151643),
    "tiny-dexvla": DexVLAConfig(
        text=TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3)),
        vision=VisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=4),
        head=_scaledp(2, 48, 4, 64, 16), tokens=TINY_TOKENS, pad_token_id=1000),
}


def preset(name: str, **head_overrides) -> DexVLAConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown DexVLA preset {name!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return replace(cfg, head=replace(cfg.head, **head_overrides)) if head_overrides else cfg


def build_meta(name: str) -> DexVLAModel:
    """The preset's module tree on the meta device (no memory; for key/shape manifests)."""
    with torch.device("meta"):
        return DexVLAModel(preset(name))


@torch.no_grad()
def init_seeded(model: DexVLAModel, seed: int, qk_gain: float = 5.0) -> DexVLAModel:
    """Deterministic random weights, parameter by parameter in name order, from ``torch.Generator(seed)``.

    Embeddings 0.1*N(0,1); ``pos_embed`` 0.5*N(0,1); >=2-D weights U(+-1/sqrt(fan_in)) (LLM q/k x ``qk_gain`` so
    greedy decoding does not collapse onto one token); biases U(+-0.1); 1-D norm weights 1 + 0.1*N(0,1).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = p.shape
        if name.endswith("embed_tokens.weight"):
            v = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("pos_embed"):
            v = 0.5 * torch.randn(shape, generator=gen)
        elif p.dim() >= 2:
            bound = 1.0 / math.sqrt(math.prod(shape[1:]))
            if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
                bound *= qk_gain
            v = (torch.rand(shape, generator=gen) * 2 - 1) * bound
        elif name.endswith("bias"):
            v = (torch.rand(shape, generator=gen) * 2 - 1) * 0.1
        else:
            v = 1 + 0.1 * torch.randn(shape, generator=gen)
        p.copy_(v.to(p.dtype))
    return model


def build_seeded(name: str = "tiny-dexvla", seed: int = 0, dtype: torch.dtype = torch.float32) -> DexVLAModel:
    return init_seeded(DexVLAModel(preset(name)), seed).to(dtype).eval()
