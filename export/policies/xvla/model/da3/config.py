"""`DA3Config`: the architecture of a Depth-Anything-3 network, as far as X-VLA needs it.

Why a config of our own: the official code builds the network from an OmegaConf object graph
(`__object__` entries naming classes) and a hard-coded table of ViT sizes. We read both official
layouts into one flat, typed description so that a checkpoint's shape is decided in one place,
and a wrong or unknown key fails loudly instead of building a subtly different network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

# DINOv2 sizes selected by `net.name` in the official yaml (`DinoV2.__init__`).
_VIT_SIZES: dict[str, dict[str, Any]] = {
    "vits": dict(embed_dim=384, depth=12, num_heads=6, ffn_layer="mlp"),
    "vitb": dict(embed_dim=768, depth=12, num_heads=12, ffn_layer="mlp"),
    "vitl": dict(embed_dim=1024, depth=24, num_heads=16, ffn_layer="mlp"),
    "vitg": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglufused"),
}

# Keys of `DinoVisionTransformer.__init__` (goldens' `vit_kwargs`) mapped to our field names.
_VIT_KWARGS = {
    "img_size": "img_size",
    "patch_size": "patch_size",
    "embed_dim": "embed_dim",
    "depth": "depth",
    "num_heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "ffn_layer": "ffn_layer",
    "num_register_tokens": "num_register_tokens",
    "init_values": "init_values",
    "qkv_bias": "qkv_bias",
    "interpolate_offset": "interpolate_offset",
    "interpolate_antialias": "interpolate_antialias",
    "rope_freq": "rope_freq",
    "alt_start": "alt_start",
    "qknorm_start": "qknorm_start",
    "rope_start": "rope_start",
    "cat_token": "cat_token",
    "out_layers": "out_layers",
}
# Constructor arguments that do not change the inference network (stochastic depth, dropout).
_VIT_NO_OP_KWARGS = {"drop_path_rate", "drop_path_uniform", "in_chans", "block_chunks"}

# `DinoV2` (yaml `net`) keys that carry the schedule.
_NET_SCHEDULE_KEYS = ("out_layers", "alt_start", "qknorm_start", "rope_start", "cat_token")

# `CameraEnc.__init__` arguments mapped to our field names.
_CAM_ENC_KWARGS = {
    "dim_in": "cam_enc_dim_in",
    "trunk_depth": "cam_enc_trunk_depth",
    "num_heads": "cam_enc_num_heads",
    "mlp_ratio": "cam_enc_mlp_ratio",
    "init_values": "cam_enc_init_values",
}
_CAM_ENC_NO_OP_KWARGS = {"target_dim", "__object__"}

# Hugging Face hub repository -> official model name (`DepthAnything3(model_name=...)`).
_HUB_ALIASES = {
    "depth-anything/da3-small": "da3-small",
    "depth-anything/da3-base": "da3-base",
    "depth-anything/da3-large": "da3-large",
    "depth-anything/da3-large-1.1": "da3-large",
    "depth-anything/da3-giant": "da3-giant",
    "depth-anything/da3-giant-1.1": "da3-giant",
}


@dataclass
class DA3Config:
    """Shape and schedule of `DepthAnything3Net`'s backbone and camera encoder.

    The DualDPT depth head, the camera decoder and the Gaussian-splatting head are not built (X-VLA
    reads only backbone features); `unbuilt_modules` names them so that loading a full official
    checkpoint can skip exactly their keys and nothing else.
    """

    name: str = "custom"
    # DINOv2 ViT/14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 518  # pos_embed is stored for this resolution (37x37 grid + 1)
    qkv_bias: bool = True
    ffn_layer: str = "mlp"  # "mlp" | "swiglufused"
    init_values: float | None = 1.0  # LayerScale init; falsy -> no LayerScale
    num_register_tokens: int = 0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    rope_freq: float = 100.0
    # schedule (-1 disables)
    alt_start: int = 8
    qknorm_start: int = 8
    rope_start: int = 8
    cat_token: bool = True
    out_layers: tuple[int, ...] = (11, 15, 19, 23)
    # camera encoder (posed mode); built iff the official net has a camera decoder
    use_cam_enc: bool = True
    cam_enc_dim_in: int = 9
    cam_enc_trunk_depth: int = 4
    cam_enc_num_heads: int = 16
    cam_enc_mlp_ratio: float = 4.0
    cam_enc_init_values: float = 0.01
    # top-level modules of the official checkpoint we deliberately do not build
    unbuilt_modules: tuple[str, ...] = field(default_factory=lambda: ("head", "cam_dec"))

    def __post_init__(self) -> None:
        self.out_layers = tuple(int(i) for i in self.out_layers)
        self.unbuilt_modules = tuple(self.unbuilt_modules)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"DA3Config.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        head_dim = self.embed_dim // self.num_heads
        if self.rope_start != -1 and self.rope_freq > 0 and head_dim % 4:
            raise ValueError(f"DA3Config: 2-D RoPE needs head_dim % 4 == 0, got head_dim={head_dim}")
        if self.ffn_layer not in ("mlp", "swiglufused", "swiglu"):
            raise ValueError(f"DA3Config.ffn_layer={self.ffn_layer!r} not in ('mlp', 'swiglufused')")
        if self.num_register_tokens:
            raise NotImplementedError(
                "DA3Config.num_register_tokens > 0: DA3 places RoPE/camera tokens assuming one special token"
            )
        for i in self.out_layers:
            if not 0 <= i < self.depth:
                raise ValueError(f"DA3Config.out_layers entry {i} is outside [0, depth={self.depth})")
        for key in ("alt_start", "qknorm_start", "rope_start"):
            v = getattr(self, key)
            if v != -1 and not 0 <= v < self.depth:
                raise ValueError(f"DA3Config.{key}={v} must be -1 or in [0, depth={self.depth})")
        if self.use_cam_enc and self.alt_start == -1:
            raise ValueError("DA3Config.use_cam_enc needs alt_start != -1 (the camera token is written there)")
        if self.use_cam_enc and self.embed_dim % self.cam_enc_num_heads:
            raise ValueError(
                f"DA3Config.cam_enc_num_heads={self.cam_enc_num_heads} does not divide embed_dim={self.embed_dim}"
            )

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def pos_embed_grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def ignored_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (DepthAnything3Net names) that loading skips on purpose."""
        return tuple(f"{m}." for m in self.unbuilt_modules)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_layers"] = list(self.out_layers)
        d["unbuilt_modules"] = list(self.unbuilt_modules)
        return d

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> "DA3Config":
        """Official sizes (`configs/da3-*.yaml`) plus `da3-tiny`, the conformance-golden size."""
        key = _HUB_ALIASES.get(name.lower(), name.lower())
        if key == "da3-tiny":
            return cls(
                name="da3-tiny", embed_dim=64, depth=6, num_heads=4, alt_start=2, qknorm_start=2,
                rope_start=2, out_layers=(2, 3, 4, 5),
            )
        presets = {
            "da3-small": ("vits", (5, 7, 9, 11), 4),
            "da3-base": ("vitb", (5, 7, 9, 11), 4),
            "da3-large": ("vitl", (11, 15, 19, 23), 8),
            "da3-giant": ("vitg", (19, 27, 33, 39), 13),
        }
        if key not in presets:
            raise KeyError(f"unknown DA3 preset {name!r}; known: da3-tiny, {', '.join(presets)}, {', '.join(_HUB_ALIASES)}")
        vit, out_layers, start = presets[key]
        unbuilt = ("head", "cam_dec", "gs_head", "gs_adapter") if key == "da3-giant" else ("head", "cam_dec")
        return cls(
            name=key, **_VIT_SIZES[vit], alt_start=start, qknorm_start=start, rope_start=start,
            out_layers=out_layers, unbuilt_modules=unbuilt,
        )

    # ------------------------------------------------------------------ official layouts
    @classmethod
    def from_official(cls, d: Mapping[str, Any]) -> "DA3Config":
        """Read an official configuration dictionary.

        Accepted layouts (see docs/geometry.md):
        1. the conformance layout: `{"da3_config": <yaml object graph>, "vit_kwargs": {...},
           "cam_enc_kwargs": {...}}` (explicit `DinoVisionTransformer`/`CameraEnc` arguments);
        2. the Hugging Face hub `config.json` of `DepthAnything3`: `{"model_name": "da3-large",
           "config": <yaml object graph>}`; a bare `{"model_name": ...}` selects the preset;
        3. the yaml object graph itself (`{"net": {...}, "head": {...}, "cam_enc": ..., ...}`).
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"DA3Config.from_official expects a mapping, got {type(d).__name__}")
        if "vit_kwargs" in d or "da3_config" in d:
            return cls._from_conformance_layout(d)
        if isinstance(d.get("config"), Mapping) and "net" in d["config"]:
            cfg = cls._from_object_graph(d["config"])
            if d.get("model_name"):
                cfg.name = str(d["model_name"])
            return cfg
        if "net" in d:
            return cls._from_object_graph(d)
        if "model_name" in d:
            return cls.preset(str(d["model_name"]))
        raise ValueError(
            "DA3Config.from_official: unrecognised layout; expected keys 'da3_config'+'vit_kwargs', "
            f"'model_name'(+'config') or 'net'; got {sorted(d)}"
        )

    @classmethod
    def _from_object_graph(cls, graph: Mapping[str, Any]) -> "DA3Config":
        net = graph.get("net")
        if not isinstance(net, Mapping):
            raise ValueError("DA3 object config: missing 'net' section")
        name = str(net.get("name", ""))
        if name not in _VIT_SIZES:
            raise ValueError(f"DA3 object config: net.name={name!r} not in {sorted(_VIT_SIZES)}")
        kw: dict[str, Any] = dict(_VIT_SIZES[name])
        kw.update(cls._schedule_from_net(net))
        kw.update(cls._camera_from_graph(graph, kw["embed_dim"]))
        return cls(name=f"da3-{name}", **kw)

    @classmethod
    def _from_conformance_layout(cls, d: Mapping[str, Any]) -> "DA3Config":
        graph = d.get("da3_config") or {}
        vit = d.get("vit_kwargs")
        if not isinstance(vit, Mapping):
            # Only the object graph: fall back to the ViT table.
            return cls._from_object_graph(graph)
        kw: dict[str, Any] = {}
        for key, value in vit.items():
            if key in _VIT_NO_OP_KWARGS:
                continue
            if key not in _VIT_KWARGS:
                raise ValueError(f"DA3Config.from_official: unknown vit_kwargs key {key!r}")
            kw[_VIT_KWARGS[key]] = value
        net = graph.get("net") if isinstance(graph, Mapping) else None
        if isinstance(net, Mapping):
            sched = cls._schedule_from_net(net)
            for key, value in sched.items():
                if key in kw and _normalise(kw[key]) != _normalise(value):
                    raise ValueError(
                        f"DA3Config.from_official: vit_kwargs.{key}={kw[key]!r} disagrees with da3_config.net.{key}={value!r}"
                    )
                kw.setdefault(key, value)
        embed_dim = int(kw.get("embed_dim", cls.embed_dim))
        cam = cls._camera_from_graph(graph, embed_dim, d.get("cam_enc_kwargs"))
        kw.update(cam)
        name = str(net.get("name", "custom")) if isinstance(net, Mapping) else "custom"
        return cls(name=name, **kw)

    @staticmethod
    def _schedule_from_net(net: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in _NET_SCHEDULE_KEYS:
            if key in net:
                out[key] = tuple(net[key]) if key == "out_layers" else net[key]
        # DinoV2 defaults when the yaml leaves them out
        out.setdefault("alt_start", -1)
        out.setdefault("qknorm_start", -1)
        out.setdefault("rope_start", -1)
        out.setdefault("cat_token", True)
        if "out_layers" not in out:
            raise ValueError("DA3 object config: net.out_layers is required")
        return out

    @staticmethod
    def _camera_from_graph(
        graph: Mapping[str, Any], embed_dim: int, cam_kwargs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Camera encoder settings; `DepthAnything3Net` builds `cam_enc` only together with `cam_dec`."""
        graph = graph if isinstance(graph, Mapping) else {}
        has_dec = graph.get("cam_dec") is not None
        cam = dict(graph.get("cam_enc") or {})
        if cam_kwargs:
            cam.update(cam_kwargs)
        unbuilt = ["head"] + (["cam_dec"] if has_dec else [])
        if graph.get("gs_head") is not None and graph.get("gs_adapter") is not None:
            unbuilt += ["gs_head", "gs_adapter"]
        out: dict[str, Any] = {"unbuilt_modules": tuple(unbuilt)}
        if not has_dec:
            out["use_cam_enc"] = False
            return out
        if not cam:
            raise ValueError("DA3 object config: cam_dec is set but cam_enc is missing")
        out["use_cam_enc"] = True
        dim_out = int(cam.get("dim_out", embed_dim))
        if dim_out != embed_dim:
            raise ValueError(f"DA3 cam_enc.dim_out={dim_out} must equal the ViT embed_dim={embed_dim}")
        for key, value in cam.items():
            if key == "dim_out" or key in _CAM_ENC_NO_OP_KWARGS:
                continue
            if key not in _CAM_ENC_KWARGS:
                raise ValueError(f"DA3Config.from_official: unknown cam_enc key {key!r}")
            out[_CAM_ENC_KWARGS[key]] = value
        return out


def _normalise(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def resolve_feature_layer(spec: int | str, depth: int) -> int:
    """The ViT block whose normed output X-VLA reads (`DA3InlineEncoder._resolve_layer`).

    Upstream quirk kept on purpose: `"last"` looks for `model.model.blocks`, which does not exist
    (the blocks live under `backbone.pretrained`), and falls back to 11 for EVERY size. DA3-XVLA
    checkpoints were trained on block 11 of DA3-LARGE's 24, so that is what we must feed them.
    """
    if isinstance(spec, str):
        if spec.lower() != "last":
            raise NotImplementedError(f"da3_feature_layer={spec!r}: only an int or 'last' is supported")
        if depth < 12:
            raise ValueError(
                f"da3_feature_layer='last' resolves to block 11 (upstream quirk) but the DA3 net has only {depth} "
                "blocks; upstream crashes here too. Give the block index as an int."
            )
        return 11
    layer = int(spec)
    if not 0 <= layer < depth:
        raise ValueError(f"da3_feature_layer={layer} is outside [0, depth={depth})")
    return layer
