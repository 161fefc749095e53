"""DexVLA graphs for serving: thin modules with fixed names, exported to ONNX with a dynamic batch axis.

* ``vision``   (pixel_values (B_img, P, C*T*p*p)) -> image_embeds (B_img, P/4, H). One camera image per row,
               all of one fixed grid (the camera size is fixed at export); attention is per image (a batch
               axis instead of ``cu_seqlens``), the vision rotary is a constant of the grid.
* ``prefill``  (input_ids (B, L), attention_mask (B, L), position_ids (3, B, L), image_embeds (B, N, H))
               -> hidden (B, L, H), logits (B, V) of the last row, present.{k,v}.i (B, kv, L, hd).
               ``image_embeds`` are scattered into the ``<|image_pad|>`` rows in order (a gather, the
               ONNX form of ``masked_scatter``); M-RoPE positions come from the runtime (numpy).
* ``decode``   (token (B, 1), attention_mask (B, S + 1), position_ids (3, B, 1), past.{k,v}.i (B, kv, S, hd))
               -> hidden (B, 1, H), logits (B, V), present.{k,v}.i (B, kv, S + 1, hd).
* ``condition`` FiLM + ScaleDP condition MLP: (hidden (B, T, H), input_mask (B, T), reasoning_mask (B, T),
               states (B, S)) -> cond_emb (B, n_emb). Once per chunk.
* ``denoise``  one ScaleDP call: (x (B, chunk, A), t (B,), cond_emb (B, n_emb)) -> eps. The DDIM update is
               plain arithmetic for the runtime.

Batch, sequence and cache lengths are dynamic; everything else is fixed at export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

from xvla.export.policies.dexvla.film import film_condition
from xvla.export.policies.dexvla.model import DexVLAModel, KVCache
from xvla.export.progress import quiet_exporters

OPSET = 20


class VisionGraph(nn.Module):
    """The library vision tower's blocks, batched over same-size images (equal to the per-image
    ``cu_seqlens`` attention of ``Qwen2VisionTransformerPretrainedModel``)."""

    def __init__(self, model: DexVLAModel, grid_h: int, grid_w: int) -> None:
        super().__init__()
        self.visual = model.visual
        grid = torch.tensor([[1, grid_h, grid_w]])
        rot = self.visual.rot_pos_emb(grid)  # (P, head_dim/2), merge-window order
        emb = torch.cat([rot, rot], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.patches = grid_h * grid_w

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (N, P, C*T*p*p) -> (N, P/4, H)
        n = pixel_values.shape[0]
        v = self.visual
        # Conv3d with kernel == stride over pre-cut patches == one matmul (the exporter's bias-less Conv3d
        # is rejected by ONNX Runtime's Conv kernel)
        w = v.patch_embed.proj.weight  # (D, C, T, p, p)
        h = (pixel_values @ w.reshape(w.shape[0], -1).t()).reshape(n, self.patches, -1)  # (N, P, D)
        for blk in v.blocks:
            attn = blk.attn
            x = blk.norm1(h)
            qkv = attn.qkv(x).reshape(n, self.patches, 3, attn.num_heads, -1).permute(2, 0, 1, 3, 4)
            q, k, val = qkv.unbind(0)  # (N, P, heads, hd)
            q, k = apply_rotary_pos_emb_vision(q, k, self.cos, self.sin)
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2), scale=attn.scaling)  # (N, heads, P, hd)
            h = h + attn.proj(o.transpose(1, 2).reshape(n, self.patches, -1))
            h = h + blk.mlp(blk.norm2(h))
        return v.merger(h.reshape(n * self.patches, -1)).reshape(n, self.patches // 4, -1)


def scatter_images(embeds: torch.Tensor, is_image: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """embeds (B, L, H); is_image (B, L); image_embeds (B, N, H) -> image rows replaced in order."""
    idx = (torch.cumsum(is_image.long(), dim=1) - 1).clamp(min=0)  # (B, L): which image row each token takes
    gathered = torch.gather(image_embeds, 1, idx.unsqueeze(-1).expand(-1, -1, image_embeds.shape[-1]))
    return torch.where(is_image.unsqueeze(-1), gathered, embeds)


class PrefillGraph(nn.Module):
    def __init__(self, model: DexVLAModel) -> None:
        super().__init__()
        self.m = model
        self.n_layers = len(model.model.layers)

    def forward(self, input_ids, attention_mask, position_ids, image_embeds):
        m = self.m
        embeds = scatter_images(m.model.embed_tokens(input_ids), input_ids == m.cfg.tokens.image_token_id,
                                image_embeds)
        cache = KVCache(self.n_layers)
        hidden, _ = m.model(embeds, attention_mask, position_ids, cache)
        logits = m.lm_head(hidden[:, -1]).float()
        return (hidden, logits, *cache.keys, *cache.values)


class DecodeGraph(nn.Module):
    def __init__(self, model: DexVLAModel) -> None:
        super().__init__()
        self.m = model
        self.n_layers = len(model.model.layers)

    def forward(self, token, attention_mask, position_ids, *past):
        m = self.m
        cache = KVCache(self.n_layers, list(past[: self.n_layers]), list(past[self.n_layers:]))
        hidden, _ = m.model(m.model.embed_tokens(token), attention_mask, position_ids, cache)
        logits = m.lm_head(hidden[:, -1]).float()
        return (hidden, logits, *cache.keys, *cache.values)


class ConditionGraph(nn.Module):
    def __init__(self, model: DexVLAModel) -> None:
        super().__init__()
        self.m = model

    def forward(self, hidden, input_mask, reasoning_mask, states):
        m = self.m
        cond = film_condition(m.input_action_proj, m.reasoning_action_proj, m.reasoning_film, hidden,
                              input_mask, reasoning_mask)["action_hidden_states"]
        return m.policy_head.condition(cond, states)


class DenoiseGraph(nn.Module):
    def __init__(self, model: DexVLAModel) -> None:
        super().__init__()
        self.m = model

    def forward(self, x, t, cond_emb):
        return self.m.policy_head.denoise(x, t, cond_emb)


@dataclass
class DexVLAGraph:
    name: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    example: Callable[[int, int], tuple]  # (batch, length) -> example torch inputs
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)  # input -> {axis: dim name}
    varargs_from: int | None = None  # inputs from this index on are the forward's ``*args``


def graphs(model: DexVLAModel, grid_hw: tuple[int, int]) -> list[DexVLAGraph]:
    """The five serving graphs of ``model`` for camera images of patch grid ``grid_hw`` (h, w)."""
    cfg = model.cfg
    n_layers, kv = cfg.text.num_hidden_layers, cfg.text.num_key_value_heads
    hd = cfg.text.hidden_size // cfg.text.num_attention_heads
    hidden, head = cfg.text.hidden_size, cfg.head
    gh, gw = grid_hw
    patches, img_tok = gh * gw, gh * gw // 4
    patch_dim = cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size ** 2
    keys = [f"present.k.{i}" for i in range(n_layers)] + [f"present.v.{i}" for i in range(n_layers)]
    past = [f"past.k.{i}" for i in range(n_layers)] + [f"past.v.{i}" for i in range(n_layers)]
    gen = torch.Generator().manual_seed(0)

    def vision_ex(b, _):
        return (torch.randn(b, patches, patch_dim, generator=gen),)

    def prefill_ex(b, seq):
        ids = torch.randint(0, 900, (b, seq), generator=gen)
        ids[:, 1:1 + img_tok] = cfg.tokens.image_token_id  # one image block per sample
        mask = torch.ones(b, seq, dtype=torch.long)
        mask[0, :1] = 0  # a left-padded sample
        pos = torch.arange(seq)[None, None].expand(3, b, seq).contiguous()
        return ids, mask, pos, torch.randn(b, img_tok, hidden, generator=gen)

    def decode_ex(b, s):
        kvs = [torch.randn(b, kv, s, hd, generator=gen) for _ in range(2 * n_layers)]
        mask = torch.ones(b, s + 1, dtype=torch.long)
        mask[0, :1] = 0
        return (torch.randint(0, 900, (b, 1), generator=gen), mask, torch.full((3, b, 1), s), *kvs)

    def condition_ex(b, t):
        rows = torch.arange(t)[None].expand(b, -1)
        return (torch.randn(b, t, hidden, generator=gen), (rows < t - 3).float(), (rows >= t - 3).float(),
                torch.randn(b, head.state_dim, generator=gen))

    def denoise_ex(b, _):
        return (torch.randn(b, head.num_queries, head.output_dim, generator=gen),
                torch.randint(0, head.num_train_timesteps, (b,), generator=gen),
                torch.randn(b, head.n_emb, generator=gen))

    bl = {0: "batch", 1: "seq"}
    return [
        DexVLAGraph("vision", VisionGraph(model, gh, gw), ["pixel_values"], ["image_embeds"], vision_ex,
                    {"pixel_values": {0: "images"}}),
        DexVLAGraph("prefill", PrefillGraph(model), ["input_ids", "attention_mask", "position_ids", "image_embeds"],
                    ["hidden", "logits", *keys], prefill_ex,
                    {"input_ids": bl, "attention_mask": bl, "position_ids": {1: "batch", 2: "seq"},
                     "image_embeds": {0: "batch", 1: "image_tokens"}}),
        DexVLAGraph("decode", DecodeGraph(model), ["token", "attention_mask", "position_ids", *past],
                    ["hidden", "logits", *keys], decode_ex, varargs_from=3,
                    dynamic={"token": {0: "batch"}, "attention_mask": {0: "batch", 1: "total"},
                             "position_ids": {1: "batch"}, **{p: {0: "batch", 2: "past"} for p in past}}),
        DexVLAGraph("condition", ConditionGraph(model), ["hidden", "input_mask", "reasoning_mask", "states"],
                    ["cond_emb"], condition_ex,
                    {"hidden": {0: "batch", 1: "rows"}, "input_mask": {0: "batch", 1: "rows"},
                     "reasoning_mask": {0: "batch", 1: "rows"}, "states": {0: "batch"}}),
        DexVLAGraph("denoise", DenoiseGraph(model), ["x", "t", "cond_emb"], ["eps"], denoise_ex,
                    {"x": {0: "batch"}, "t": {0: "batch"}, "cond_emb": {0: "batch"}}),
    ]


def _dims(spec: DexVLAGraph) -> tuple:
    named: dict[str, torch.export.Dim] = {}

    def dim(n: str):
        if n not in named:
            lo = 1 if n in ("batch", "images") else 2
            named[n] = torch.export.Dim(n, min=lo, max=8192)
        return named[n]

    if "total" in {a for d in spec.dynamic.values() for a in d.values()}:
        named["past"] = torch.export.Dim("past", min=2, max=8191)
        named["total"] = named["past"] + 1
    flat = tuple({ax: dim(n) for ax, n in spec.dynamic.get(name, {}).items()} or None for name in spec.input_names)
    if spec.varargs_from is None:
        return flat
    return (*flat[: spec.varargs_from], flat[spec.varargs_from:])


def export_onnx(spec: DexVLAGraph, out_dir: Path, opset: int = OPSET) -> Path:
    """``out_dir/<name>.onnx`` (+ external data) through ``torch.export`` with the graph's dynamic axes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    args = spec.example(2, 12)
    with torch.no_grad(), quiet_exporters():
        torch.onnx.export(spec.module.eval(), args, str(path), input_names=spec.input_names,
                          output_names=spec.output_names, opset_version=opset, dynamo=True, external_data=True,
                          dynamic_shapes=_dims(spec), optimize=False)
    return path


def parity(spec: DexVLAGraph, path: Path, cases: list[tuple[int, int]]) -> float:
    """Max |ONNX Runtime - PyTorch| over all outputs for (batch, length) example cases."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for b, n in cases:
        args = spec.example(b, n)
        with torch.no_grad():
            ref = spec.module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(spec.output_names, {k: v.numpy() for k, v in zip(spec.input_names, args)})
        for name, r, g in zip(spec.output_names, ref, got):
            if tuple(r.shape) != tuple(g.shape):
                raise AssertionError(f"graph {spec.name} output {name}: shape {g.shape} != torch {tuple(r.shape)}")
            worst = max(worst, float(np.abs(r.float().numpy() - g).max()))
    return worst
