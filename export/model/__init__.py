"""Model code: one module per block of X-VLA (Florence-2 encoder, action transformer, DA3 geometry).

Public entry points: :class:`XVLA` and :class:`XVLAConfig` (``XVLAConfig.preset("tiny")``).
"""

from .action_space import ActionSpace, AutoActionSpace, EE6DActionSpace, JointActionSpace, build_action_space
from .bart import BartEncoder, BartEncoderLayer, BartSelfAttention
from .config import (R1PRO_ACTION_DIM, R1PRO_IDX_FOR_DELTA, BartEncoderConfig, DaViTConfig, FlorenceConfig,
                     XVLAConfig)
from .davit import ChannelAttention, ChannelBlock, DaViT, SpatialBlock, WindowAttention
from .florence import Florence2Encoder
from .heads import SkillHeads, select_skill
from .transformer import (Attention, DomainAwareLinear, Mlp, SoftPromptedTransformer, TransformerBlock,
                          timestep_embedding)
from .xvla import XVLA

__all__ = [
    "XVLA", "XVLAConfig", "DaViTConfig", "BartEncoderConfig", "FlorenceConfig",
    "R1PRO_ACTION_DIM", "R1PRO_IDX_FOR_DELTA",
    "ActionSpace", "EE6DActionSpace", "JointActionSpace", "AutoActionSpace", "build_action_space",
    "DaViT", "SpatialBlock", "ChannelBlock", "WindowAttention", "ChannelAttention",
    "BartEncoder", "BartEncoderLayer", "BartSelfAttention", "Florence2Encoder",
    "SoftPromptedTransformer", "DomainAwareLinear", "TransformerBlock", "Attention", "Mlp", "timestep_embedding",
    "SkillHeads", "select_skill",
]
