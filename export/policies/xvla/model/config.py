"""Dataclass configs for X-VLA, readable from and writable to the official ``config.json``.

Field names are the official ones (``XVLAConfig`` / ``Florence2Config`` / ``DaViT`` /
``Florence2LanguageConfig``), so an official ``config.json`` loads field by field and the
dict we write loads back into the official code. Keys we do not model (Hugging Face
generation settings, ``transformers_version``, ...) are kept verbatim in ``extra`` so that a
load/save round trip does not lose them.

Our additions (v20 BEHAVIOR-1K skill conditioning) are off by default so official
checkpoints load strictly:

* ``skill_conditioning`` (bool): adds ``transformer.task_prompt_hub``,
  ``transformer.skill_prompt_hub`` and ``skill_heads.{classifier,progress}``.
* ``num_tasks`` / ``num_skills`` (50 / 34): rows of the two prompt hubs and width of the heads.
* ``prompt_mode`` (``"add"`` | ``"replace"``): task+skill prompts are added to the domain
  soft prompt, or replace it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from xvla.core.embodiments.r1pro import R1PRO_ACTION_DIM, R1PRO_IDX_FOR_DELTA

_PROMPT_MODES = ("add", "replace")
_ACTION_MODES = ("ee6d", "joint", "auto")


def _split_known(cls: type, data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a raw dict into dataclass fields and the rest (kept verbatim as ``extra``)."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in names and k != "extra"}
    extra.update(copy.deepcopy(data.get("extra", {}) or {}))
    extra.pop("model_type", None)  # always written by to_dict
    return known, extra


def _as_tuple(value: Any, where: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise TypeError(f"{where}: expected a list, got {value!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- vision


@dataclass
class DaViTConfig:
    """Florence-2 vision tower (DaViT) plus the image projection settings that live next to it."""

    dim_embed: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (1, 1, 9, 1)
    num_heads: tuple[int, ...] = (8, 16, 32, 64)  # window (spatial) attention heads
    num_groups: tuple[int, ...] = (8, 16, 32, 64)  # channel attention groups
    window_size: int = 12
    patch_size: tuple[int, ...] = (7, 3, 3, 3)
    patch_stride: tuple[int, ...] = (4, 2, 2, 2)
    patch_padding: tuple[int, ...] = (3, 1, 1, 1)
    patch_prenorm: tuple[bool, ...] = (False, True, True, True)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    projection_dim: int = 1024
    image_pos_embed: dict[str, Any] = field(
        default_factory=lambda: {"type": "learned_abs_2d", "max_pos_embeddings": 50}
    )
    visual_temporal_embedding: dict[str, Any] = field(
        default_factory=lambda: {"type": "COSINE", "max_temporal_embeddings": 100}
    )
    image_feature_source: tuple[str, ...] = ("spatial_avg_pool", "temporal_avg_pool")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("dim_embed", "depths", "num_heads", "num_groups", "patch_size", "patch_stride",
                     "patch_padding", "patch_prenorm", "image_feature_source"):
            setattr(self, name, _as_tuple(getattr(self, name), f"vision_config.{name}"))
        n = len(self.dim_embed)
        for name in ("depths", "num_heads", "num_groups", "patch_size", "patch_stride", "patch_padding",
                     "patch_prenorm"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"vision_config.{name} has {len(getattr(self, name))} entries, "
                                 f"dim_embed has {n}")
        for i, (c, h, g) in enumerate(zip(self.dim_embed, self.num_heads, self.num_groups)):
            if c % h or c % g:
                raise ValueError(f"vision_config: stage {i} width {c} is not divisible by "
                                 f"num_heads {h} / num_groups {g}")
        if self.image_pos_embed.get("type") != "learned_abs_2d":
            raise ValueError(f"vision_config.image_pos_embed.type {self.image_pos_embed.get('type')!r} "
                             "is not supported (only 'learned_abs_2d')")
        if self.visual_temporal_embedding.get("type") != "COSINE":
            raise ValueError("vision_config.visual_temporal_embedding.type "
                             f"{self.visual_temporal_embedding.get('type')!r} is not supported (only 'COSINE')")
        bad = set(self.image_feature_source) - {"spatial_avg_pool", "temporal_avg_pool", "last_frame"}
        if bad:
            raise ValueError(f"vision_config.image_feature_source has unknown entries {sorted(bad)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DaViTConfig":
        known, extra = _split_known(cls, data, "vision_config")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.setdefault("model_type", "davit")
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = _jsonable(getattr(self, f.name))
        return out


# --------------------------------------------------------------------------- text


@dataclass
class BartEncoderConfig:
    """The BART language encoder of Florence-2 (the decoder is never built)."""

    vocab_size: int = 51289
    d_model: int = 1024
    encoder_layers: int = 12
    encoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    max_position_embeddings: int = 4096
    activation_function: str = "gelu"
    scale_embedding: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"text_config.d_model {self.d_model} is not divisible by "
                             f"encoder_attention_heads {self.encoder_attention_heads}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BartEncoderConfig":
        known, extra = _split_known(cls, data, "text_config")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.setdefault("model_type", "florence2_language")
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = _jsonable(getattr(self, f.name))
        return out


@dataclass
class FlorenceConfig:
    """Florence-2 encoder = DaViT + image projection + BART encoder (``florence_config``)."""

    vision_config: DaViTConfig = field(default_factory=DaViTConfig)
    text_config: BartEncoderConfig = field(default_factory=BartEncoderConfig)
    projection_dim: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vision_config.projection_dim != self.projection_dim:
            raise ValueError(f"florence_config.projection_dim {self.projection_dim} != "
                             f"vision_config.projection_dim {self.vision_config.projection_dim}")
        if self.text_config.d_model != self.projection_dim:
            raise ValueError(f"florence_config.projection_dim {self.projection_dim} != "
                             f"text_config.d_model {self.text_config.d_model}: image tokens and text "
                             "tokens share the encoder input")

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlorenceConfig":
        if data.get("vision_config") is None or data.get("text_config") is None:
            # The official Florence2Config() default cannot build a model either (README §8).
            raise ValueError("florence_config must contain both 'vision_config' and 'text_config'")
        known, extra = _split_known(cls, data, "florence_config")
        extra.pop("vocab_size", None)  # derived from text_config
        vision = DaViTConfig.from_dict(known.pop("vision_config"))
        text = BartEncoderConfig.from_dict(known.pop("text_config"))
        known.setdefault("projection_dim", vision.projection_dim)
        return cls(vision_config=vision, text_config=text, **known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.setdefault("model_type", "florence2")
        out["projection_dim"] = self.projection_dim
        out["vocab_size"] = self.vocab_size
        out["vision_config"] = self.vision_config.to_dict()
        out["text_config"] = self.text_config.to_dict()
        return out


# --------------------------------------------------------------------------- whole model


@dataclass
class XVLAConfig:
    """Whole-model config; ``to_dict()`` is exactly what ``config.json`` holds."""

    florence_config: FlorenceConfig = field(default_factory=FlorenceConfig)
    # action transformer
    hidden_size: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_domains: int = 30
    len_soft_prompts: int = 32
    dim_time: int = 32
    max_len_seq: int = 512
    use_hetero_proj: bool = False
    soft_prompt_length: int = 32  # official field, unused by the official code as well
    # action space
    max_action_dim: int = 20
    real_action_dim: int = 20
    num_actions: int = 30
    action_mode: str = "ee6d"
    use_proprio: bool = True
    idx_for_delta: tuple[int, ...] = ()
    idx_for_mask_proprio: tuple[int, ...] = ()
    # v20 BEHAVIOR-1K skill conditioning (ours; see module docstring)
    skill_conditioning: bool = False
    num_tasks: int = 50
    num_skills: int = 34
    prompt_mode: str = "add"
    # DA3-XVLA geometry conditioning: the official ``geometry_conditioning`` dict (off unless
    # ``enabled``); typed view in ``.geometry``, keys documented in docs/geometry.md.
    geometry_conditioning: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    PRESETS: ClassVar[dict[str, Callable[[], "XVLAConfig"]]] = {}

    def __post_init__(self) -> None:
        self.action_mode = self.action_mode.lower()
        self.idx_for_delta = tuple(int(i) for i in _as_tuple(self.idx_for_delta, "idx_for_delta"))
        self.idx_for_mask_proprio = tuple(
            int(i) for i in _as_tuple(self.idx_for_mask_proprio, "idx_for_mask_proprio"))
        if self.action_mode not in _ACTION_MODES:
            raise ValueError(f"action_mode {self.action_mode!r} is not one of {_ACTION_MODES}")
        if self.prompt_mode not in _PROMPT_MODES:
            raise ValueError(f"prompt_mode {self.prompt_mode!r} is not one of {_PROMPT_MODES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.skill_conditioning and self.len_soft_prompts <= 0:
            raise ValueError("skill_conditioning needs len_soft_prompts > 0 (the prompts are soft-prompt tokens)")
        if self.action_mode == "auto" and self.real_action_dim > self.max_action_dim:
            raise ValueError(f"real_action_dim {self.real_action_dim} > max_action_dim {self.max_action_dim}")
        self.geometry_conditioning = dict(self.geometry_conditioning or {})
        self.geometry  # validates an enabled geometry_conditioning early

    @property
    def geometry(self) -> Any:
        """``GeometryConfig`` of an enabled ``geometry_conditioning``, else None (export/policies/xvla/model/geometry.py)."""
        if not self.geometry_conditioning.get("enabled", False):
            return None
        from xvla.export.policies.xvla.model.geometry import GeometryConfig

        return GeometryConfig.from_official(self.geometry_conditioning, hidden_size=self.hidden_size,
                                            mlp_ratio=self.mlp_ratio)

    # -- serialisation ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "XVLAConfig":
        """Accepts the official ``config.json`` (nested ``florence_config``) and our own output."""
        if "florence_config" not in data or data["florence_config"] is None:
            raise ValueError("config: 'florence_config' is missing (the official default cannot build a model)")
        known, extra = _split_known(cls, data, "config")
        if extra.get("architectures") == ["XVLA"]:
            del extra["architectures"]  # always written by to_dict
        florence = known.pop("florence_config")
        if not isinstance(florence, FlorenceConfig):
            florence = FlorenceConfig.from_dict(florence)
        return cls(florence_config=florence, **known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(copy.deepcopy(self.extra))
        out.setdefault("model_type", "xvla")
        out.setdefault("architectures", ["XVLA"])
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if f.name == "florence_config" else _jsonable(value)
        return out

    def replace(self, **changes: Any) -> "XVLAConfig":
        return dataclasses.replace(copy.deepcopy(self), **changes)

    # -- presets ------------------------------------------------------------------------
    @classmethod
    def register_preset(cls, name: str, factory: Callable[[], "XVLAConfig"]) -> None:
        """Add a named preset (other parts of the project register e.g. geometry variants)."""
        cls.PRESETS[name] = factory

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "XVLAConfig":
        if name not in cls.PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(cls.PRESETS)}")
        cfg = cls.PRESETS[name]()
        return cfg.replace(**overrides) if overrides else cfg

    @classmethod
    def preset_names(cls) -> list[str]:
        return sorted(cls.PRESETS)


# --------------------------------------------------------------------------- presets

# R1Pro 23-d action (BEHAVIOR-1K): the layout and its delta dims are embodiment data (xvla.core.embodiments.r1pro).


def _tiny() -> XVLAConfig:
    """Small enough for unit tests on 2 CPU cores; same topology as the 0.9B model."""
    vision = DaViTConfig(dim_embed=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                         num_groups=(2, 2, 4, 4), projection_dim=32)
    text = BartEncoderConfig(vocab_size=1024, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                             encoder_ffn_dim=64, max_position_embeddings=256)
    return XVLAConfig(florence_config=FlorenceConfig(vision, text, projection_dim=32),
                      hidden_size=32, depth=2, num_heads=2)


def _xvla_09b() -> XVLAConfig:
    """The default X-VLA-0.9B (Florence-2-large encoder; README §6b of the goldens)."""
    return XVLAConfig()


def r1pro_variant(base: XVLAConfig, skills: bool = False) -> XVLAConfig:
    """The same topology with the R1Pro 23-d mixed delta/absolute action head (+ v20 skill heads)."""
    return base.replace(action_mode="auto", real_action_dim=R1PRO_ACTION_DIM, max_action_dim=R1PRO_ACTION_DIM,
                        idx_for_delta=R1PRO_IDX_FOR_DELTA, skill_conditioning=skills)


XVLAConfig.register_preset("tiny", _tiny)
XVLAConfig.register_preset("xvla-0.9b", _xvla_09b)
XVLAConfig.register_preset("tiny-r1pro", lambda: r1pro_variant(_tiny(), skills=False))
XVLAConfig.register_preset("tiny-r1pro-v20", lambda: r1pro_variant(_tiny(), skills=True))
XVLAConfig.register_preset("xvla-0.9b-r1pro", lambda: r1pro_variant(_xvla_09b(), skills=False))
XVLAConfig.register_preset("xvla-0.9b-r1pro-v20", lambda: r1pro_variant(_xvla_09b(), skills=True))


# DA3-XVLA (geometry-conditioned) presets; the dict is what an official config.json carries.
_GEOMETRY_COMMON = {"enabled": True, "da3_source": "da3_encoder_inline", "fusion_type": "cross_attention",
                    "fusion_position": "before_policy", "geometry_resampler_type": "perceiver",
                    "geometry_projector_type": "mlp", "use_da3_latent_segmentation": False,
                    "use_posed_da3": True, "freeze_da3": True, "da3_feature_size": 64, "da3_process_res": 224}
# v17 card: DA3-LARGE frozen, 224, posed, 240 tokens; "last" is block 11 (upstream quirk, docs/geometry.md).
_GEOMETRY_V17 = {**_GEOMETRY_COMMON, "da3_model_name": "depth-anything/DA3-LARGE", "da3_input_dim": 1024,
                 "da3_feature_layer": "last", "num_geometry_tokens": 240, "cross_attention_layers": 6,
                 "cross_attention_heads": 8}
# Tiny X-VLA + the conformance-size DA3 (64-d, 6 blocks): fast on CPU.
_GEOMETRY_TINY = {**_GEOMETRY_COMMON, "da3_model_name": "da3-tiny", "da3_input_dim": 64, "da3_feature_layer": 5,
                  "num_geometry_tokens": 16, "cross_attention_layers": 2, "cross_attention_heads": 2}

XVLAConfig.register_preset("tiny-geo", lambda: _tiny().replace(geometry_conditioning=dict(_GEOMETRY_TINY)))
XVLAConfig.register_preset("da3-xvla", lambda: _xvla_09b().replace(geometry_conditioning=dict(_GEOMETRY_V17)))
XVLAConfig.register_preset("da3-xvla-r1pro",
                           lambda: r1pro_variant(_xvla_09b(), skills=False).replace(geometry_conditioning=dict(_GEOMETRY_V17)))
