"""DexVLA configuration, read from the official checkpoint folder's ``config.json``.

The official folder is a Hugging Face ``qwen2_vla`` config: Qwen2-VL text fields at the top level, a
``vision_config`` *diff-dict* (absent keys take ``Qwen2VLVisionConfig`` defaults), and the ScaleDP head
in a nested ``policy_head_config`` (a full ``PretrainedConfig.to_dict()``; we read only the fields the
head uses). ``rope_scaling.type`` reads ``default`` in saved configs although the rotary embedding is
Qwen2-VL's multimodal one (``mrope_section``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    """Qwen2-VL vision tower; defaults are ``Qwen2VLVisionConfig``'s (the diff-dict fallbacks)."""

    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 3584  # merger output = LLM hidden size
    hidden_act: str = "quick_gelu"
    mlp_ratio: float = 4.0
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2


@dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder with multimodal RoPE."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class ScaleDPConfig:
    """The ScaleDP diffusion-transformer head (``scale_dp_policy``) and its DDIM schedule."""

    input_dim: int
    output_dim: int
    state_dim: int
    cond_dim: int
    prediction_horizon: int
    n_emb: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_inference_timesteps: int = 10
    num_train_timesteps: int = 100
    num_queries: int = 16
    learn_sigma: bool = False

    @property
    def chunk(self) -> int:
        """Actions per chunk the sampler returns (``num_queries``, the head's noise length)."""
        return self.num_queries


@dataclass(frozen=True)
class TokenIds:
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    bos_token_id: int
    eos_token_id: int


@dataclass(frozen=True)
class DexVLAConfig:
    text: TextConfig
    vision: VisionConfig
    head: ScaleDPConfig
    tokens: TokenIds
    using_film: bool = True
    with_llm_head: bool = True
    policy_head_type: str = "scale_dp_policy"
    llm_loss_weight: float = 1.0
    # Pad id FiLM counts to find the first real token (official literal 151643 = Qwen2-VL <|endoftext|>).
    pad_token_id: int = 151643
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d


_HEAD_FIELDS = {f for f in ScaleDPConfig.__dataclass_fields__}


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise KeyError(f"{where}: missing required field {key!r}")
    return d[key]


def config_from_dict(raw: dict[str, Any], pad_token_id: int | None = None) -> DexVLAConfig:
    """Build the config from a ``qwen2_vla`` config dict (what ``config.json`` holds)."""
    if raw.get("model_type") != "qwen2_vla":
        raise ValueError(f"config.json: model_type must be 'qwen2_vla', got {raw.get('model_type')!r}")
    head_type = raw.get("policy_head_type", raw.get("policy_head_config", {}).get("model_type"))
    if head_type != "scale_dp_policy":
        raise ValueError(f"config.json: policy_head_type {head_type!r} is not supported (only 'scale_dp_policy')")
    rope = raw.get("rope_scaling") or {}
    section = tuple(int(x) for x in _require(rope, "mrope_section", "config.json rope_scaling"))
    text = TextConfig(
        vocab_size=int(_require(raw, "vocab_size", "config.json")),
        hidden_size=int(_require(raw, "hidden_size", "config.json")),
        intermediate_size=int(_require(raw, "intermediate_size", "config.json")),
        num_hidden_layers=int(_require(raw, "num_hidden_layers", "config.json")),
        num_attention_heads=int(_require(raw, "num_attention_heads", "config.json")),
        num_key_value_heads=int(raw.get("num_key_value_heads", raw["num_attention_heads"])),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 1e6)),
        mrope_section=section,  # type: ignore[arg-type]
        max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
        hidden_act=str(raw.get("hidden_act", "silu")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
    )
    vraw = dict(raw.get("vision_config") or {})
    # `in_chans` / `spatial_patch_size` are ignored by Qwen2VLVisionConfig (as in the real config).
    vkeys = {k: vraw[k] for k in VisionConfig.__dataclass_fields__ if k in vraw}
    vision = VisionConfig(**vkeys)
    hraw = _require(raw, "policy_head_config", "config.json")
    head = ScaleDPConfig(**{k: hraw[k] for k in _HEAD_FIELDS if k in hraw})
    if head.learn_sigma:
        raise ValueError("policy_head_config.learn_sigma=True is not supported (the official sampler ignores sigma)")
    tokens = TokenIds(
        image_token_id=int(_require(raw, "image_token_id", "config.json")),
        video_token_id=int(_require(raw, "video_token_id", "config.json")),
        vision_start_token_id=int(_require(raw, "vision_start_token_id", "config.json")),
        vision_end_token_id=int(_require(raw, "vision_end_token_id", "config.json")),
        bos_token_id=int(raw.get("bos_token_id", 151643)),
        eos_token_id=int(raw.get("eos_token_id", 151645)),
    )
    return DexVLAConfig(text=text, vision=vision, head=head, tokens=tokens,
                        using_film=bool(raw.get("using_film", True)),
                        with_llm_head=bool(raw.get("with_llm_head", True)),
                        policy_head_type=head_type, llm_loss_weight=float(raw.get("llm_loss_weight", 1.0)),
                        pad_token_id=151643 if pad_token_id is None else int(pad_token_id),
                        extra=raw)


def tokenizer_pad_id(folder: Path) -> int | None:
    """The pad id of the folder's tokenizer (``tokenizer_config.json`` pad token -> id), if any."""
    cfg = Path(folder) / "tokenizer_config.json"
    tok = Path(folder) / "tokenizer.json"
    if not (cfg.is_file() and tok.is_file()):
        return None
    pad = json.loads(cfg.read_text()).get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    if pad is None:
        return None
    for t in json.loads(tok.read_text()).get("added_tokens", []):
        if t["content"] == pad:
            return int(t["id"])
    return None


def load_config(folder: str | Path) -> DexVLAConfig:
    """``config.json`` of an official DexVLA checkpoint folder; FiLM's pad id from its tokenizer."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a DexVLA checkpoint folder (no config.json)")
    return config_from_dict(json.loads(path.read_text()), pad_token_id=tokenizer_pad_id(folder))
