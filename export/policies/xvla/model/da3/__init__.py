"""Depth-Anything-3 geometry encoder (backbone + camera encoder), re-implemented for export.

See docs/geometry.md. Public names:
  DA3Config            architecture/schedule (`from_official`, `preset`)
  DA3Net, DA3Hub       the network; `DA3Hub` adds the hub's `model.` level
  load_da3_state_dict  strict key-name loading from any official layout
  pose_encoding, rotation_to_quaternion_xyzw, affine_inverse
"""

from xvla.export.policies.xvla.model.da3.camera import (
    CameraEncoder,
    affine_inverse,
    pose_encoding,
    rotation_to_quaternion_xyzw,
)
from xvla.export.policies.xvla.model.da3.config import DA3Config, resolve_feature_layer
from xvla.export.policies.xvla.model.da3.loading import (
    DA3LoadReport,
    detect_prefix,
    load_da3_safetensors,
    load_da3_state_dict,
)
from xvla.export.policies.xvla.model.da3.net import DA3Backbone, DA3Hub, DA3Net
from xvla.export.policies.xvla.model.da3.vit import VisionTransformer

__all__ = [
    "CameraEncoder",
    "DA3Backbone",
    "DA3Config",
    "DA3Hub",
    "DA3LoadReport",
    "DA3Net",
    "VisionTransformer",
    "affine_inverse",
    "detect_prefix",
    "load_da3_safetensors",
    "load_da3_state_dict",
    "pose_encoding",
    "resolve_feature_layer",
    "rotation_to_quaternion_xyzw",
]
