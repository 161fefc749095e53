"""DA3-XVLA geometry path: images + camera poses -> K geometry tokens -> fused policy sequence.

    image_input [B,V,3,H,W] (ImageNet-normalised, what the VLM gets)
      -> DA3InlineEncoder: un-normalise, clamp to [0,1], optional resize to process_res (K rescaled),
                           DA3 backbone (posed: camera tokens from E, K), feature of one block,
                           bilinear upsampling to feature_size            -> [B, V, C, fs, fs]
      -> GeometryConditioner: tokens view-major [B, V*fs*fs, C], input_proj MLP + LayerNorm,
                              perceiver resampler with K learned queries  -> [B, K, H]
    transformer sequence x [B, S, H]
      -> GeometryCrossAttentionFusion (post-LN cross-attention to the K tokens), before block 0.

Key names follow the DA3-XVLA checkpoint: `da3_inline.model.model.*` (frozen DA3),
`geometry_conditioner.*`, `transformer.geometry_fusion.*`. Upstream: JackLiu0406/spatial-xvla-training
(`models/da3_inline.py`, `models/geometry_conditioning.py`); quirks in docs/geometry.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from xvla.export.policies.xvla.model.da3 import DA3Config, DA3Hub, resolve_feature_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- config
@dataclass
class GeometryConfig:
    """The `geometry_conditioning` settings of a DA3-XVLA checkpoint that shape the network.

    Defaults are upstream's defaults; the DA3-XVLA v17 values are in `GeometryConfig.preset("v17")`.
    `hidden_size`/`mlp_ratio` are the action transformer's (the fusion uses its MLP ratio).
    """

    da3_model_name: str = "depth-anything/DA3-LARGE"
    da3: DA3Config = field(default_factory=lambda: DA3Config.preset("da3-large"))
    da3_input_dim: int = 1024  # channels of the DA3 feature (= DA3 embed_dim)
    da3_process_res: int = 504  # images are stretched to this square size unless already there
    da3_feature_size: int = 64  # DA3 feature map is upsampled to fs x fs
    da3_feature_layer: int | str = "last"  # "last" -> block 11 for every size (upstream quirk)
    da3_native_input: bool = False  # upstream XVLA_DA3_NATIVE_INPUT=1: skip the resize for /14 inputs
    use_posed_da3: bool = False
    freeze_da3: bool = True
    num_geometry_tokens: int = 32
    cross_attention_layers: int = 1
    cross_attention_heads: int = 8
    hidden_size: int = 1024
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.da3, Mapping):
            self.da3 = DA3Config.from_official(self.da3) if "net" in self.da3 or "model_name" in self.da3 else DA3Config(**self.da3)
        if self.da3_input_dim != self.da3.embed_dim:
            raise ValueError(
                f"geometry: da3_input_dim={self.da3_input_dim} must equal the DA3 embed_dim={self.da3.embed_dim}"
            )
        if self.hidden_size % self.cross_attention_heads:
            raise ValueError(
                f"geometry: hidden_size={self.hidden_size} not divisible by cross_attention_heads={self.cross_attention_heads}"
            )
        if self.da3_process_res % self.da3.patch_size:
            raise ValueError(f"geometry: da3_process_res={self.da3_process_res} is not a multiple of {self.da3.patch_size}")
        self.feature_layer  # validates da3_feature_layer against the depth

    @property
    def feature_layer(self) -> int:
        return resolve_feature_layer(self.da3_feature_layer, self.da3.depth)

    # Keys of the official `geometry_conditioning` dict we read; the rest must be inert for inference.
    _OFFICIAL_KEYS = (
        "da3_model_name", "da3_input_dim", "da3_process_res", "da3_feature_size", "da3_feature_layer",
        "num_geometry_tokens", "cross_attention_layers", "cross_attention_heads", "use_posed_da3", "freeze_da3",
    )
    # Settings under which the network is exactly what we build; anything else is refused.
    _REQUIRED = {
        "da3_source": ("da3_encoder_inline",),
        "geometry_resampler_type": ("perceiver",),
        "geometry_projector_type": ("mlp",),
        "fusion_type": ("cross_attention",),
        "fusion_position": ("before_policy",),
        "geometry_backbone": ("da3",),
        "use_da3_latent_segmentation": (False,),
        "perceiver_input_pos_emb": (False,),
        "use_spatial_cross_attention": (False,),
    }

    @classmethod
    def from_official(
        cls, gc: Mapping[str, Any], *, hidden_size: int, mlp_ratio: float, da3: DA3Config | None = None
    ) -> "GeometryConfig":
        """From the `geometry_conditioning` dict of an official DA3-XVLA `config.json`.

        The DA3 architecture comes from `da3` if given, else from the dict's `da3_config` (our
        addition: any layout `DA3Config.from_official` reads), else from `da3_model_name` (presets).
        """
        for key, allowed in cls._REQUIRED.items():
            if key in gc and gc[key] not in allowed:
                raise NotImplementedError(f"geometry_conditioning.{key}={gc[key]!r} is not supported (only {allowed})")
        if gc.get("geometry_hidden_dim") not in (None, hidden_size):
            raise NotImplementedError("geometry_conditioning.geometry_hidden_dim != hidden_size is not supported")
        kw = {k: gc[k] for k in cls._OFFICIAL_KEYS if k in gc and gc[k] is not None}
        name = str(kw.get("da3_model_name", cls.da3_model_name))
        if da3 is None and isinstance(gc.get("da3_config"), Mapping):
            da3 = DA3Config.from_official(gc["da3_config"])  # ours: an explicit official DA3 config
        da3 = da3 or DA3Config.preset(name)
        kw.setdefault("da3_input_dim", da3.embed_dim)
        return cls(da3=da3, hidden_size=hidden_size, mlp_ratio=mlp_ratio, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["da3"] = self.da3.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeometryConfig":
        d = dict(d)
        if isinstance(d.get("da3"), Mapping):
            d["da3"] = DA3Config(**d["da3"])
        return cls(**d)

    @classmethod
    def preset(cls, name: str) -> "GeometryConfig":
        """`tiny` (conformance sizes, fast on CPU) or `v17` (DA3-XVLA v17: DA3-LARGE, 224, posed, K=240)."""
        if name == "tiny":
            return cls(
                da3_model_name="da3-tiny", da3=DA3Config.preset("da3-tiny"), da3_input_dim=64,
                da3_process_res=224, da3_feature_layer=5, use_posed_da3=True, num_geometry_tokens=16,
                cross_attention_layers=2, cross_attention_heads=4, hidden_size=64, mlp_ratio=4.0,
            )
        if name == "v17":
            return cls(
                da3_model_name="depth-anything/DA3-LARGE", da3=DA3Config.preset("da3-large"), da3_input_dim=1024,
                da3_process_res=224, da3_feature_layer="last", use_posed_da3=True, num_geometry_tokens=240,
                cross_attention_layers=6, cross_attention_heads=8, hidden_size=1024, mlp_ratio=4.0,
            )
        raise KeyError(f"unknown geometry preset {name!r}; known: tiny, v17")


# --------------------------------------------------------------------------- DA3 inline encoder
class DA3InlineEncoder(nn.Module):
    """ImageNet-normalised views (+ pose) -> upsampled DA3 feature map [B, V, C, fs, fs].

    Differences from the DA3 API on purpose (DA3-XVLA quirks): the network sees [0,1] pixels
    (un-normalised AND clamped, not re-normalised), extrinsics are passed raw (no normalisation),
    and the feature is the normed output of ONE block (`feature_layer`), not the DPT head.
    """

    def __init__(
        self,
        da3: DA3Config,
        *,
        feature_layer: int | str = "last",
        feature_size: int = 64,
        process_res: int = 504,
        native_input: bool = False,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        self.model = DA3Hub(da3)  # state_dict: model.model.<DepthAnything3Net key>
        self.feature_layer = resolve_feature_layer(feature_layer, da3.depth)
        self.feature_size = int(feature_size)
        self.process_res = int(process_res)
        self.native_input = bool(native_input)
        if freeze:
            self.model.requires_grad_(False)

    @property
    def net(self):
        return self.model.model

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        p = self.net.cfg.patch_size
        if self.native_input and h % p == 0 and w % p == 0:
            return h, w
        return self.process_res, self.process_res

    def prepare_inputs(
        self, image_input: torch.Tensor, intrinsics: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ImageNet-normalised [B,V,3,H,W] -> DA3 input in [0,1] at the process size, and K rescaled to it.

        Un-normalise then clamp (no re-normalisation: DA3-XVLA feeds [0,1] pixels). A resize is a
        bilinear stretch (align_corners=False, no antialias); fx, cx scale with the width ratio,
        fy, cy with the height ratio.
        """
        b, v, c, h, w = image_input.shape
        # ImageNet statistics as Python scalars per channel (the same float32 arithmetic as a constant
        # tensor): no tensor built from Python values per call, i.e. no host->device copy per chunk and
        # nothing illegal inside CUDA-graph capture, and fp32 whatever dtype the module was cast to.
        x = image_input.float()
        x = torch.stack([x[:, :, ch] * float(IMAGENET_STD[ch]) + float(IMAGENET_MEAN[ch]) for ch in range(3)], dim=2)
        x = x.clamp(0.0, 1.0)
        th, tw = self.target_size(h, w)
        k = intrinsics.float() if intrinsics is not None else None
        if (th, tw) != (h, w):
            x = F.interpolate(x.reshape(b * v, c, h, w), size=(th, tw), mode="bilinear", align_corners=False)
            x = x.reshape(b, v, c, th, tw)
            if k is not None:
                sw, sh = tw / float(w), th / float(h)
                # fx, cx scale with the width, fy, cy with the height, the rest unchanged; Python scalars,
                # not a tensor built from a list per call (no host->device copy).
                row0 = torch.stack([k[..., 0, 0] * sw, k[..., 0, 1], k[..., 0, 2] * sw], dim=-1)
                row1 = torch.stack([k[..., 1, 0], k[..., 1, 1] * sh, k[..., 1, 2] * sh], dim=-1)
                k = torch.stack([row0, row1, k[..., 2, :]], dim=-2)
        return x, k

    def forward(
        self,
        image_input: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if image_input.dim() != 5 or image_input.shape[2] != 3:
            raise ValueError(f"image_input must be [B, V, 3, H, W], got {list(image_input.shape)}")
        b, v, c, h, w = image_input.shape
        for name, t, tail in (("extrinsics", extrinsics, (4, 4)), ("intrinsics", intrinsics, (3, 3))):
            if t is not None and tuple(t.shape) != (b, v, *tail):
                raise ValueError(f"{name} must be [B={b}, V={v}, {tail[0]}, {tail[1]}], got {list(t.shape)}")
        out_dtype = image_input.dtype
        x, k = self.prepare_inputs(image_input, intrinsics)
        e = extrinsics.float() if extrinsics is not None else None
        feat = self.net(x, e, k, [self.feature_layer])[0]  # [B, V, h', w', C]
        hp, wp, ch = feat.shape[2], feat.shape[3], feat.shape[4]
        feat = feat.permute(0, 1, 4, 2, 3).reshape(b * v, ch, hp, wp)
        fs = self.feature_size
        feat = F.interpolate(feat, size=(fs, fs), mode="bilinear", align_corners=False)
        return feat.reshape(b, v, ch, fs, fs).to(out_dtype)


# --------------------------------------------------------------------------- attention pieces
class FeedForward(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (upstream `_FeedForward`)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PackedCrossAttention(nn.Module):
    """`nn.MultiheadAttention(batch_first=True)` parameters (packed q,k,v rows), computed with SDPA.

    Why not nn.MultiheadAttention itself: its Python dispatch (fast paths, mask merging) is
    needless for a fixed cross-attention and we want one plain exportable graph.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, n, d = query.shape
        m = kv.shape[1]
        hd = d // self.num_heads
        wq, wk, wv = self.in_proj_weight.chunk(3, dim=0)
        bq, bk, bv = self.in_proj_bias.chunk(3, dim=0)
        q = F.linear(query, wq, bq).reshape(b, n, self.num_heads, hd).transpose(1, 2)
        k = F.linear(kv, wk, bk).reshape(b, m, self.num_heads, hd).transpose(1, 2)
        v = F.linear(kv, wv, bv).reshape(b, m, self.num_heads, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d / heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResamplerLayer(nn.Module):
    """Pre-LN perceiver layer: x += attn(LN_q x, LN_kv t); x += ffn(LN_ffn x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.q_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(dim)
        self.attn = PackedCrossAttention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.q_norm(x), self.kv_norm(tokens))
        return x + self.ffn(self.ffn_norm(x))


class GeometryResampler(nn.Module):
    """K learned queries cross-attend to the projected DA3 tokens (`GeometryTokenResampler`)."""

    def __init__(self, dim: int, num_queries: int, num_heads: int, num_layers: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, num_queries, dim))  # upstream init N(0, 1)
        self.layers = nn.ModuleList(ResamplerLayer(dim, num_heads) for _ in range(max(1, num_layers)))
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.query.expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, tokens)
        return self.out_norm(x)


class GeometryConditioner(nn.Module):
    """DA3 feature map [B, V, C, h, w] -> geometry tokens [B, K, D] (`SegmentedDA3GeometryConditioner`,
    perceiver resampler, MLP projector, no latent segmentation, no input position embedding)."""

    def __init__(self, da3_input_dim: int, hidden_dim: int, num_geometry_tokens: int, num_heads: int, num_layers: int) -> None:
        super().__init__()
        self.da3_input_dim = da3_input_dim
        self.input_proj = nn.Sequential(
            nn.Linear(da3_input_dim, hidden_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
        )
        self.resampler = GeometryResampler(hidden_dim, num_geometry_tokens, num_heads, num_layers)

    @classmethod
    def from_config(cls, cfg: GeometryConfig) -> "GeometryConditioner":
        return cls(cfg.da3_input_dim, cfg.hidden_size, cfg.num_geometry_tokens, cfg.cross_attention_heads, cfg.cross_attention_layers)

    def forward(self, da3_features: torch.Tensor) -> torch.Tensor:
        if da3_features.dim() != 5 or da3_features.shape[2] != self.da3_input_dim:
            raise ValueError(
                f"da3_features must be [B, V, C={self.da3_input_dim}, h, w], got {list(da3_features.shape)}"
            )
        b, v, c, h, w = da3_features.shape
        tokens = da3_features.float().permute(0, 1, 3, 4, 2).reshape(b, v * h * w, c)  # view, row, col
        return self.resampler(self.input_proj(tokens))


class FusionLayer(nn.Module):
    """Post-LN: x = LN_attn(x + attn(LN_q x, LN_kv g)); x = LN_ffn(x + ffn(x)) (FFN input not normed)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.q_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(dim)
        self.attn = PackedCrossAttention(dim, num_heads)
        self.attn_norm = nn.LayerNorm(dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, geometry_tokens: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(self.q_norm(x), self.kv_norm(geometry_tokens)))
        return self.ffn_norm(x + self.ffn(x))


class GeometryCrossAttentionFusion(nn.Module):
    """The action transformer's whole sequence [B, S, D] cross-attends to geometry tokens [B, K, D]."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(dim, num_heads, mlp_ratio) for _ in range(max(1, num_layers)))

    @classmethod
    def from_config(cls, cfg: GeometryConfig) -> "GeometryCrossAttentionFusion":
        return cls(cfg.hidden_size, cfg.cross_attention_heads, cfg.cross_attention_layers, cfg.mlp_ratio)

    def forward(self, policy_tokens: torch.Tensor, geometry_tokens: torch.Tensor) -> torch.Tensor:
        if policy_tokens.shape[-1] != geometry_tokens.shape[-1]:
            raise ValueError(
                f"policy/geometry hidden sizes differ: {policy_tokens.shape[-1]} vs {geometry_tokens.shape[-1]}"
            )
        x = policy_tokens
        for layer in self.layers:
            x = layer(x, geometry_tokens.to(x.dtype))
        return x


# --------------------------------------------------------------------------- the exported graph
class GeometryEncoder(nn.Module):
    """image_input [B,V,3,H,W], extrinsics [B,V,4,4], intrinsics [B,V,3,3] -> geometry_tokens [B,K,H].

    The geometry graph that `xvla-export` turns into its own engine: runs once per action chunk.
    Holds the same submodules as X-VLA (`da3_inline`, `geometry_conditioner`), so its state-dict
    keys are the checkpoint's.
    """

    def __init__(self, da3_inline: DA3InlineEncoder, geometry_conditioner: GeometryConditioner, *, use_posed: bool = True) -> None:
        super().__init__()
        self.da3_inline = da3_inline
        self.geometry_conditioner = geometry_conditioner
        self.use_posed = bool(use_posed)

    @classmethod
    def from_config(cls, cfg: GeometryConfig) -> "GeometryEncoder":
        return cls(build_da3_inline(cfg), GeometryConditioner.from_config(cfg), use_posed=cfg.use_posed_da3)

    def forward(self, image_input: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
        if self.use_posed:
            feats = self.da3_inline(image_input, extrinsics, intrinsics)
        else:  # upstream: without use_posed_da3 the poses are dropped and DA3 runs unposed
            feats = self.da3_inline(image_input)
        return self.geometry_conditioner(feats)


def build_da3_inline(cfg: GeometryConfig) -> DA3InlineEncoder:
    return DA3InlineEncoder(
        cfg.da3,
        feature_layer=cfg.da3_feature_layer,
        feature_size=cfg.da3_feature_size,
        process_res=cfg.da3_process_res,
        native_input=cfg.da3_native_input,
        freeze=cfg.freeze_da3,
    )


# --------------------------------------------------------------------------- X-VLA integration
DA3_CHECKPOINT_PREFIX = "da3_inline.model.model."


def attach_geometry(model: nn.Module, cfg: GeometryConfig) -> None:
    """Build the geometry modules onto an X-VLA model under the checkpoint's names.

    `model.da3_inline` (frozen DA3), `model.geometry_conditioner`, `model.transformer.geometry_fusion`,
    and `model.ignored_checkpoint_prefixes`: the official DA3 sub-networks we do not build
    (`da3_inline.model.model.head.` / `cam_dec.`), which checkpoint loading skips and reports.
    """
    model.da3_inline = build_da3_inline(cfg)
    model.geometry_conditioner = GeometryConditioner.from_config(cfg)
    model.transformer.geometry_fusion = GeometryCrossAttentionFusion.from_config(cfg)
    model.ignored_checkpoint_prefixes = tuple(DA3_CHECKPOINT_PREFIX + p for p in cfg.da3.ignored_prefixes)


def geometry_encoder_of(model: nn.Module) -> GeometryEncoder:
    """The exportable geometry graph of an X-VLA geometry model (shares its modules and weights)."""
    cfg = getattr(model, "geometry_config", None)
    if cfg is None or model.da3_inline is None or model.geometry_conditioner is None:
        raise ValueError("this X-VLA model has no geometry encoder (config.geometry_conditioning is not enabled)")
    return GeometryEncoder(model.da3_inline, model.geometry_conditioner, use_posed=cfg.use_posed_da3)
