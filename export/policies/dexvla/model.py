"""DexVLA in PyTorch: Qwen2-VL (vision tower + Qwen2 decoder with M-RoPE) + FiLM + ScaleDP.

What comes from where (see docs/dexvla.md):

* transformers (``models.qwen2_vl.modeling_qwen2_vl``), exact for the official transformers-4.49 math:
  the whole vision tower ``Qwen2VisionTransformerPretrainedModel`` (Conv3d patch embed, 2-D vision rotary
  in merge-window order, per-image attention, quick_gelu blocks, ``PatchMerger``), the decoder layers
  ``Qwen2VLDecoderLayer`` (GQA, q/k/v bias, multimodal rotary ``apply_multimodal_rotary_pos_emb``, SiLU MLP,
  RMSNorm), ``Qwen2VLRotaryEmbedding``, ``Qwen2RMSNorm`` and the M-RoPE index ``Qwen2VLModel.get_rope_index``.
* our code: the decoder loop (causal + left-pad additive mask like 4.49's ``_update_causal_mask``, an
  explicit per-layer KV cache), greedy generation with per-sample EOS and the decode-step positions
  ``cache_position + rope_deltas``, FiLM fusion (``film.py``), ScaleDP (``scaledp.py``), DDIM (``sampler.py``).

Official key names are kept (``visual.*``, ``model.*``, ``lm_head`` tied to ``model.embed_tokens``,
``policy_head.*``, ``input_action_proj.*``, ``reasoning_action_proj.*``, ``reasoning_film.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2RMSNorm,
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLDecoderLayer,
    Qwen2VLModel,
    Qwen2VLRotaryEmbedding,
)

from xvla.export.policies.dexvla.config import DexVLAConfig
from xvla.export.policies.dexvla.film import ActionProjector, FiLM, film_condition, film_masks
from xvla.export.policies.dexvla.sampler import DDIMSampler
from xvla.export.policies.dexvla.scaledp import ScaleDP

ATTN_IMPL = "sdpa"  # what the official `from_pretrained` picks


def hf_text_config(cfg: DexVLAConfig) -> Qwen2VLTextConfig:
    t = cfg.text
    hf = Qwen2VLTextConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, hidden_act=t.hidden_act, rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta, max_position_embeddings=t.max_position_embeddings, use_sliding_window=False,
        rope_scaling={"type": "mrope", "mrope_section": list(t.mrope_section)}, attention_dropout=0.0,
        tie_word_embeddings=t.tie_word_embeddings,
    )
    hf._attn_implementation = ATTN_IMPL
    return hf


def hf_vision_config(cfg: DexVLAConfig) -> Qwen2VLVisionConfig:
    v = cfg.vision
    hf = Qwen2VLVisionConfig(
        depth=v.depth, embed_dim=v.embed_dim, hidden_size=v.hidden_size, hidden_act=v.hidden_act,
        mlp_ratio=v.mlp_ratio, num_heads=v.num_heads, in_channels=v.in_channels, patch_size=v.patch_size,
        spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size,
    )
    hf._attn_implementation = ATTN_IMPL
    return hf


class KVCache:
    """Per-layer keys/values (B, kv_heads, S, head_dim) behind the ``update`` call the library attention makes."""

    def __init__(self, num_layers: int, keys: Optional[list] = None, values: Optional[list] = None) -> None:
        self.keys: list[Optional[torch.Tensor]] = list(keys) if keys is not None else [None] * num_layers
        self.values: list[Optional[torch.Tensor]] = list(values) if values is not None else [None] * num_layers

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, cache_kwargs=None):
        if self.keys[layer_idx] is not None:
            k = torch.cat([self.keys[layer_idx], k], dim=-2)
            v = torch.cat([self.values[layer_idx], v], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        k = self.keys[layer_idx]
        return 0 if k is None else int(k.shape[-2])


def additive_mask(attention_mask: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 key mask -> (B, 1, q_len, S) additive mask: causal over the last q_len positions + padding.

    Masked entries are ``finfo.min`` (not -inf) as in transformers 4.49, so fully masked left-pad rows stay
    finite (their values are unspecified) instead of turning into NaN.
    """
    b, s = attention_mask.shape
    q_pos = torch.arange(s - q_len, s, device=attention_mask.device)[:, None]  # absolute query positions
    k_pos = torch.arange(s, device=attention_mask.device)[None]
    allowed = (k_pos <= q_pos)[None] & attention_mask.bool()[:, None, :]  # (B, q, S)
    mask = torch.zeros(b, 1, q_len, s, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class DexVLALanguageModel(nn.Module):
    """Qwen2 decoder: ``embed_tokens``, library decoder layers, final RMSNorm (keys ``model.*``)."""

    def __init__(self, cfg: DexVLAConfig) -> None:
        super().__init__()
        hf = hf_text_config(cfg)
        self.embed_tokens = nn.Embedding(hf.vocab_size, hf.hidden_size)
        self.layers = nn.ModuleList(Qwen2VLDecoderLayer(hf, i) for i in range(hf.num_hidden_layers))
        self.norm = Qwen2RMSNorm(hf.hidden_size, eps=hf.rms_norm_eps)
        self.rotary_emb = Qwen2VLRotaryEmbedding(config=hf)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: Optional[KVCache] = None, keep_layers: bool = False):
        """inputs_embeds (B, q, H), attention_mask (B, past + q), position_ids (3, B, q).

        Returns (last hidden after the final norm (B, q, H), [input of each layer] if keep_layers).
        """
        mask = additive_mask(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype)
        cos_sin = self.rotary_emb(inputs_embeds, position_ids)  # 2 x (3, B, q, head_dim)
        h = inputs_embeds
        per_layer = []
        for layer in self.layers:
            if keep_layers:
                per_layer.append(h)
            h = layer(h, attention_mask=mask, past_key_values=cache, use_cache=cache is not None,
                      position_embeddings=cos_sin)[0]
        return self.norm(h), per_layer


@dataclass
class Generation:
    sequences: torch.Tensor  # (B, L + N) prompt + generated ids (pad id after a sample's EOS)
    new_tokens: torch.Tensor  # (B, N)
    n_new: torch.Tensor  # (B,) tokens each sample generated, its EOS included
    step_logits: torch.Tensor  # (B, N, V) logits that chose each generated token
    hidden: torch.Tensor  # (B, L + N - 1, H) last-layer rows: prompt + every generated token but the last
    prefill_hidden: torch.Tensor  # (B, L, H)
    rope_deltas: torch.Tensor  # (B, 1)


class DexVLAModel(nn.Module):
    """``Qwen2VLForConditionalGenerationForVLA`` with the ScaleDP head, inference side."""

    def __init__(self, cfg: DexVLAConfig) -> None:
        super().__init__()
        if not cfg.using_film:
            raise ValueError("config.json: using_film=False (the tinyvla head-only variant) is not supported")
        self.cfg = cfg
        hidden = cfg.text.hidden_size
        self.visual = Qwen2VisionTransformerPretrainedModel(hf_vision_config(cfg))
        self.model = DexVLALanguageModel(cfg)
        self.lm_head = nn.Linear(hidden, cfg.text.vocab_size, bias=False)
        self.policy_head = ScaleDP(cfg.head)
        self.input_action_proj = ActionProjector(hidden, hidden)
        self.reasoning_action_proj = ActionProjector(hidden, hidden)
        self.reasoning_film = FiLM(hidden, hidden)
        if cfg.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.sampler = DDIMSampler(cfg.head.num_train_timesteps, cfg.head.num_inference_timesteps)
        # Library get_rope_index reads only these config fields.
        self._rope_owner = SimpleNamespace(config=SimpleNamespace(
            vision_config=SimpleNamespace(spatial_merge_size=cfg.vision.spatial_merge_size),
            image_token_id=cfg.tokens.image_token_id, video_token_id=cfg.tokens.video_token_id,
            vision_start_token_id=cfg.tokens.vision_start_token_id))

    # ---- VLM -------------------------------------------------------------------------------------------
    def rope_index(self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor,
                   attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE positions (3, B, L) and rope_deltas (B, 1) (transformers' ``get_rope_index``)."""
        return Qwen2VLModel.get_rope_index(self._rope_owner, input_ids, image_grid_thw, None, attention_mask)

    def image_embeds(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values (patches, C*2*14*14), grid (images, 3) -> (merged tokens, H)."""
        return self.visual(pixel_values.to(self.visual.get_dtype()), grid_thw=image_grid_thw)

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image embeddings scattered into the <|image_pad|> rows, in order."""
        embeds = self.model.embed_tokens(input_ids)  # (B, L, H)
        is_image = input_ids == self.cfg.tokens.image_token_id
        n_tokens, n_feats = int(is_image.sum()), int(image_embeds.shape[0])
        if n_tokens != n_feats:
            raise ValueError(f"image tokens and image features do not match: tokens {n_tokens}, features {n_feats}")
        return embeds.masked_scatter(is_image.unsqueeze(-1).expand_as(embeds), image_embeds.to(embeds.dtype))

    def vlm_forward(self, input_ids, attention_mask, pixel_values, image_grid_thw, position_ids=None) -> dict:
        """The official ``forward(is_eval=True)``: logits, last hidden, per-layer inputs (no cache)."""
        if position_ids is None:
            position_ids, _ = self.rope_index(input_ids, image_grid_thw, attention_mask)
        embeds = self.embed(input_ids, self.image_embeds(pixel_values, image_grid_thw))
        last, per_layer = self.model(embeds, attention_mask, position_ids, keep_layers=True)
        return {"last_hidden_state": last, "hidden_states_per_layer": torch.stack(per_layer),
                "logits": self.lm_head(last).float()}

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Prompt -> last-layer rows (B, L, H) and the filled KV cache."""
        cache = KVCache(len(self.model.layers))
        hidden, _ = self.model(self.embed(input_ids, image_embeds), attention_mask, position_ids, cache)
        return hidden, cache

    def decode_step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, rope_deltas: torch.Tensor,
                    cache: KVCache) -> torch.Tensor:
        """One token per sample (B,) at position ``cache length + rope_delta`` -> its row (B, 1, H).

        attention_mask (B, cache length + 1) includes the new token; the cache grows by one.
        """
        b = tokens.shape[0]
        pos = (cache.get_seq_length() + rope_deltas).view(1, b, 1).expand(3, b, 1)  # same on t/h/w streams
        hidden, _ = self.model(self.model.embed_tokens(tokens[:, None]), attention_mask, pos, cache)
        return hidden

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                 image_grid_thw: torch.Tensor, max_new_tokens: int, eos_token_id: int,
                 pad_token_id: Optional[int] = None) -> Generation:
        """Greedy decoding with a KV cache, batch-correct: per-sample EOS; finished rows are fed ``pad``."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        pad = eos_token_id if pad_token_id is None else pad_token_id
        b = input_ids.shape[0]
        position_ids, rope_deltas = self.rope_index(input_ids, image_grid_thw, attention_mask)
        h, cache = self.prefill(input_ids, attention_mask, self.image_embeds(pixel_values, image_grid_thw),
                                position_ids)
        prefill = h
        rows, logits_steps, tokens = [h], [], []
        logits = self.lm_head(h[:, -1]).float()  # (B, V)
        unfinished = torch.ones(b, dtype=torch.bool, device=input_ids.device)
        n_new = torch.zeros(b, dtype=torch.long, device=input_ids.device)
        mask = attention_mask
        for step in range(max_new_tokens):
            logits_steps.append(logits)
            nxt = torch.where(unfinished, logits.argmax(dim=-1), torch.full_like(n_new, pad))
            tokens.append(nxt)
            n_new = n_new + unfinished.long()
            unfinished = unfinished & (nxt != eos_token_id)
            if step == max_new_tokens - 1 or not bool(unfinished.any()):
                break
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            h = self.decode_step(nxt, mask, rope_deltas, cache)
            rows.append(h)
            logits = self.lm_head(h[:, -1]).float()
        new_tokens = torch.stack(tokens, dim=1)
        return Generation(sequences=torch.cat([input_ids, new_tokens], dim=1), new_tokens=new_tokens, n_new=n_new,
                          step_logits=torch.stack(logits_steps, dim=1), hidden=torch.cat(rows, dim=1),
                          prefill_hidden=prefill, rope_deltas=rope_deltas)

    # ---- FiLM + head -----------------------------------------------------------------------------------
    def film(self, sequences: torch.Tensor, hidden: torch.Tensor, prompt_len: int,
             n_new: torch.Tensor) -> dict:
        """Head condition (B, 1, H) from the generation rows (official ``film_forward``, per-sample spans)."""
        input_mask, reasoning_mask = film_masks(sequences, prompt_len, n_new, self.cfg.pad_token_id, hidden.shape[1])
        return film_condition(self.input_action_proj, self.reasoning_action_proj, self.reasoning_film,
                              hidden, input_mask, reasoning_mask)

    @torch.no_grad()
    def sample_actions(self, cond: torch.Tensor, states: torch.Tensor, noise: torch.Tensor,
                       trace: Optional[dict] = None) -> torch.Tensor:
        """DDIM from per-sample ``noise`` (B, chunk, A) -> normalized actions (B, chunk, A)."""
        if noise.shape[0] != cond.shape[0]:
            raise ValueError(f"noise batch {noise.shape[0]} != condition batch {cond.shape[0]} (one draw per sample)")
        cond_emb = self.policy_head.condition(cond, states)
        return self.sampler.sample(lambda x, t: self.policy_head.denoise(x, t, cond_emb), noise.to(cond.dtype), trace)

    @torch.no_grad()
    def predict(self, input_ids, attention_mask, pixel_values, image_grid_thw, states, noise,
                max_new_tokens: int, eos_token_id: int, pad_token_id: Optional[int] = None) -> dict:
        """Prompt + images + normalized state + noise -> reasoning ids and normalized actions."""
        gen = self.generate(input_ids, attention_mask, pixel_values, image_grid_thw, max_new_tokens,
                            eos_token_id, pad_token_id)
        film = self.film(gen.sequences, gen.hidden, input_ids.shape[1], gen.n_new)
        actions = self.sample_actions(film["action_hidden_states"], states, noise)
        return {"generation": gen, "film": film, "actions": actions}


    # ---- training objective (reproduces the official loss; not used for serving) -----------------------
    def training_loss(self, input_ids, attention_mask, labels, pixel_values, image_grid_thw, actions, states,
                      is_pad, noise, timesteps) -> dict:
        """Official ``forward(is_eval=False)``: LM cross-entropy + ScaleDP eps-MSE (noise/timesteps injected).

        labels (B, L): -100 on pad + prompt, the answer ids after it; FiLM's reasoning span is every answer
        row; noise (n_samples=1, B, T, A), timesteps (B,).
        """
        position_ids, _ = self.rope_index(input_ids, image_grid_thw, attention_mask)
        embeds = self.embed(input_ids, self.image_embeds(pixel_values, image_grid_thw))
        hidden, _ = self.model(embeds, attention_mask, position_ids)
        logits = self.lm_head(hidden).float()
        llm_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        is_prompt = (labels == -100).int()
        end = torch.argmax((is_prompt[:, :-1] ^ is_prompt[:, 1:]).float(), dim=1) + 1  # (B,) first answer row
        rows = torch.arange(labels.shape[1], device=labels.device)[None]
        start = (input_ids == self.cfg.pad_token_id).sum(dim=1, keepdim=True)
        cond = film_condition(self.input_action_proj, self.reasoning_action_proj, self.reasoning_film, hidden,
                              (rows >= start) & (rows < end[:, None]), rows >= end[:, None])["action_hidden_states"]
        chunk = self.cfg.head.num_queries
        actions, is_pad, noise = actions[:, :chunk], is_pad[:, :chunk], noise[0]
        noisy = self.sampler.add_noise(actions, noise, timesteps)
        eps = self.policy_head(noisy, timesteps, cond, states)
        action_loss = (F.mse_loss(eps, noise, reduction="none") * ~is_pad.unsqueeze(-1)).mean()
        return {"loss": action_loss + self.cfg.llm_loss_weight * llm_loss, "llm_loss": llm_loss,
                "action_loss": action_loss}


def unnormalize_min_max(actions: torch.Tensor, action_min: torch.Tensor, action_max: torch.Tensor) -> torch.Tensor:
    """LeRobot MIN_MAX inverse: (x + 1) / 2 * (max - min) + min."""
    return (actions + 1) / 2 * (action_max - action_min) + action_min
