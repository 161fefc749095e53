"""Galaxea R1Pro, as data: the 23-d action/state layout, its delta and gripper dims, the X-VLA domain
id, and how to cut the 23-d state from the simulator's 256-d ``robot_r1::proprio``.

Source of the 256-d layout: BEHAVIOR-1K / OmniGibson ``omnigibson/learning/utils/eval_utils.py``,
``PROPRIOCEPTION_INDICES["R1Pro"]`` (2025 challenge layout: joint_qpos 0:28, ..., base_qvel 253:256).
The slices used here:

    base_qvel            253:256  (3)
    trunk_qpos           236:240  (4)
    arm_left_qpos        158:165  (7)
    gripper_left_qpos    193:195  (2 fingers, summed to a width)
    arm_right_qpos       197:204  (7)
    gripper_right_qpos   232:234  (2 fingers, summed to a width)

State order: the openpi BEHAVIOR baseline (``b1k_policy.extract_state_from_proprio``) puts both
grippers last ([base, trunk, left arm, right arm, left grip, right grip]). X-VLA's R1Pro
action is [base 0:3, torso 3:7, left arm 7:14, left gripper 14, right arm 15:22, right
gripper 22] and decodes delta dims as ``action[i] += state[i]``, which is only meaningful when
the state follows the action layout. So the default here is the action-aligned order; the
baseline order is available as ``order="b1k_baseline"`` (manifest ``preprocess.proprio.r1pro_order``).
"""

from __future__ import annotations

import numpy as np

from xvla.core.embodiments.layout import ActionLayout, Part, PartKind

NAME = "r1pro"
R1PRO_RAW_DIM = 256
R1PRO_STATE_DIM = 23
R1PRO_ACTION_DIM = 23
# X-VLA's domain id for the R1Pro (BEHAVIOR-1K fine-tunes; the model cards' "domain 19").
R1PRO_DOMAIN_ID = 19
# Dims decoded as ``action[i] += state[i]`` (torso and arm joints); base velocities and grippers are absolute.
R1PRO_IDX_FOR_DELTA: tuple[int, ...] = (3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21)
# X-VLA / R1Pro view order for three cameras (the model's, not the dataset's).
R1PRO_CAMERAS: tuple[str, ...] = ("head", "left_wrist", "right_wrist")

R1PRO = ActionLayout(
    name="r1pro",
    parts=(
        Part("base", 0, 3, PartKind.VELOCITY),  # x, y, yaw velocities
        Part("torso", 3, 7, PartKind.POSITION),
        Part("left_arm", 7, 14, PartKind.POSITION),
        Part("left_gripper", 14, 15, PartKind.GRIPPER),
        Part("right_arm", 15, 22, PartKind.POSITION),
        Part("right_gripper", 22, 23, PartKind.GRIPPER),
    ),
)



PROPRIO_SLICES: dict[str, slice] = {
    "arm_left_qpos": slice(158, 165),
    "gripper_left_qpos": slice(193, 195),
    "arm_right_qpos": slice(197, 204),
    "gripper_right_qpos": slice(232, 234),
    "trunk_qpos": slice(236, 240),
    "base_qvel": slice(253, 256),
}

ORDERS = ("action_aligned", "b1k_baseline")

# The 23-d action: base 0:3, torso 3:7, left arm 7:14, left gripper 14, right arm 15:22, right gripper 22.
R1PRO_GRIPPER_DIMS: tuple[int, ...] = tuple(int(i) for i in R1PRO.indices(PartKind.GRIPPER))
R1PRO_ACTION_NAMES: tuple[str, ...] = tuple(R1PRO.names())


def r1pro_state_from_proprio(proprio: np.ndarray, order: str = "action_aligned") -> np.ndarray:
    """[..., 256] raw proprio -> [..., 23] state (float32)."""
    p = np.asarray(proprio, dtype=np.float32)
    if p.shape[-1] != R1PRO_RAW_DIM:
        raise ValueError(f"R1Pro raw proprio must have {R1PRO_RAW_DIM} values, got shape {p.shape}")
    s = PROPRIO_SLICES
    base, trunk = p[..., s["base_qvel"]], p[..., s["trunk_qpos"]]
    left, right = p[..., s["arm_left_qpos"]], p[..., s["arm_right_qpos"]]
    lg = p[..., s["gripper_left_qpos"]].sum(axis=-1, keepdims=True)
    rg = p[..., s["gripper_right_qpos"]].sum(axis=-1, keepdims=True)
    if order == "action_aligned":
        parts = [base, trunk, left, lg, right, rg]
    elif order == "b1k_baseline":
        parts = [base, trunk, left, right, lg, rg]
    else:
        raise ValueError(f"unknown R1Pro state order {order!r}; choose from {ORDERS}")
    return np.concatenate(parts, axis=-1)
