"""Model code: one module per block of X-VLA (Florence-2 encoder, action transformer, DA3 geometry).

Public entry points: :class:`XVLA` and :class:`XVLAConfig` (``XVLAConfig.preset("tiny")``).

Names are resolved lazily (PEP 562): importing the package (e.g. for its config) does not build
every block.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ActionSpace": "action_space", "AutoActionSpace": "action_space", "EE6DActionSpace": "action_space",
    "JointActionSpace": "action_space", "build_action_space": "action_space",
    "BartEncoder": "bart", "BartEncoderLayer": "bart", "BartSelfAttention": "bart",
    "R1PRO_ACTION_DIM": "config", "R1PRO_IDX_FOR_DELTA": "config", "BartEncoderConfig": "config",
    "DaViTConfig": "config", "FlorenceConfig": "config", "XVLAConfig": "config",
    "ChannelAttention": "davit", "ChannelBlock": "davit", "DaViT": "davit", "SpatialBlock": "davit",
    "WindowAttention": "davit",
    "Florence2Encoder": "florence",
    "SkillHeads": "heads", "select_skill": "heads",
    "Attention": "transformer", "DomainAwareLinear": "transformer", "Mlp": "transformer",
    "SoftPromptedTransformer": "transformer", "TransformerBlock": "transformer", "timestep_embedding": "transformer",
    "XVLA": "xvla",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
