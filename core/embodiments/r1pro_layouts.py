"""Galaxea R1Pro raw-proprio layouts of the BEHAVIOR evaluators, and how to cut X-VLA's 23-d state from each.

The evaluators send one flat float vector under ``robot_r1::proprio``; its length says which
evaluator (and robot config) produced it, so the layout is detected from the message length.

2025 challenge (256 values)
    Source: BEHAVIOR-1K ``OmniGibson/omnigibson/learning/utils/eval_utils.py``,
    ``PROPRIOCEPTION_INDICES["R1Pro"]`` (read at commit 031729c4 of the stored snapshot):
    joint_qpos 0:28, ..., arm_left_qpos 158:165, gripper_left_qpos 193:195,
    arm_right_qpos 197:204, gripper_right_qpos 232:234, trunk_qpos 236:240, base_qvel 253:256.

2026 challenge (61 values for the bundled R1Pro config)
    Derived from the evaluator's own config and code: ``OmniGibson/omnigibson/eval/r1pro.yaml``
    lists ``proprio_obs`` (read at commit c71025ad) in this order: base_qvel, arm_left_qpos,
    arm_left_qvel, eef_left_pos, eef_left_quat, gripper_left_qpos, gripper_left_qvel, the same
    seven for the right side, trunk_qpos, trunk_qvel. OmniGibson concatenates the robot's
    proprioception dict in that order; the per-field sizes are the R1Pro's (holonomic base:
    3 velocities; 7-joint arms; eef position 3 + quaternion 4; two-finger grippers; 4 trunk joints).
    ``OmniGibson/omnigibson/eval/utils/eval_utils.py`` ``PROPRIOCEPTION_INDICES["R1Pro"]``
    (commit 24b15b7c) writes the same table out (base_qvel 0:3 ... trunk_qvel 57:61); a test
    checks the two agree. The snapshot did not carry the tag ``v3.9.3``; these are the newest
    stored versions of those files.

The 23-d state (both layouts)
    X-VLA's R1Pro action is [base 0:3, torso 3:7, left arm 7:14, left gripper 14, right arm 15:22,
    right gripper 22] and decodes delta dims as ``action[i] += state[i]``, so the state follows
    the action layout ("action_aligned", the default). The openpi BEHAVIOR baseline puts both
    grippers last ("b1k_baseline"). Gripper encoding: the two finger joint positions summed
    (the opening width in metres), as the openpi baseline's ``extract_state_from_proprio`` does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

R1PRO_STATE_DIM = 23
STATE_ORDERS = ("action_aligned", "b1k_baseline")

# Sizes of the proprioception fields the R1Pro reports (OmniGibson R1Pro robot).
R1PRO_FIELD_SIZES: dict[str, int] = {
    "base_qvel": 3,
    "arm_left_qpos": 7, "arm_left_qvel": 7, "eef_left_pos": 3, "eef_left_quat": 4,
    "gripper_left_qpos": 2, "gripper_left_qvel": 2,
    "arm_right_qpos": 7, "arm_right_qvel": 7, "eef_right_pos": 3, "eef_right_quat": 4,
    "gripper_right_qpos": 2, "gripper_right_qvel": 2,
    "trunk_qpos": 4, "trunk_qvel": 4,
}

# eval/r1pro.yaml ``proprio_obs`` (2026 evaluator), in order.
PROPRIO_OBS_2026: tuple[str, ...] = (
    "base_qvel",
    "arm_left_qpos", "arm_left_qvel", "eef_left_pos", "eef_left_quat", "gripper_left_qpos", "gripper_left_qvel",
    "arm_right_qpos", "arm_right_qvel", "eef_right_pos", "eef_right_quat", "gripper_right_qpos", "gripper_right_qvel",
    "trunk_qpos", "trunk_qvel",
)

# The fields the 23-d state is cut from.
STATE_FIELDS = ("base_qvel", "trunk_qpos", "arm_left_qpos", "gripper_left_qpos", "arm_right_qpos", "gripper_right_qpos")


@dataclass(frozen=True)
class RawProprioLayout:
    """One evaluator's flat ``robot_r1::proprio`` vector: named slices, and where they come from."""

    name: str
    fields: "OrderedDict[str, slice]"
    source: str

    @property
    def dim(self) -> int:
        return max(s.stop for s in self.fields.values())

    def field(self, proprio: np.ndarray, name: str) -> np.ndarray:
        if name not in self.fields:
            raise KeyError(f"layout {self.name!r} has no field {name!r} (fields: {list(self.fields)})")
        return proprio[..., self.fields[name]]

    def state(self, proprio: np.ndarray, order: str = "action_aligned") -> np.ndarray:
        """[..., dim] raw proprio -> [..., 23] float32 state (grippers: finger positions summed)."""
        p = np.asarray(proprio, dtype=np.float32)
        if p.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: raw proprio must have {self.dim} values, got shape {list(p.shape)}")
        f = {n: self.field(p, n) for n in STATE_FIELDS}
        lg = f["gripper_left_qpos"].sum(axis=-1, keepdims=True)
        rg = f["gripper_right_qpos"].sum(axis=-1, keepdims=True)
        if order == "action_aligned":
            parts = [f["base_qvel"], f["trunk_qpos"], f["arm_left_qpos"], lg, f["arm_right_qpos"], rg]
        elif order == "b1k_baseline":
            parts = [f["base_qvel"], f["trunk_qpos"], f["arm_left_qpos"], f["arm_right_qpos"], lg, rg]
        else:
            raise ValueError(f"unknown R1Pro state order {order!r}; choose from {STATE_ORDERS}")
        return np.concatenate(parts, axis=-1)


def layout_from_proprio_obs(names: tuple[str, ...] | list[str], name: str, source: str) -> RawProprioLayout:
    """The layout OmniGibson produces for a ``proprio_obs`` list: the fields concatenated in order."""
    fields: OrderedDict[str, slice] = OrderedDict()
    pos = 0
    for n in names:
        if n not in R1PRO_FIELD_SIZES:
            raise KeyError(f"proprio_obs field {n!r} has no known R1Pro size (known: {sorted(R1PRO_FIELD_SIZES)})")
        fields[n] = slice(pos, pos + R1PRO_FIELD_SIZES[n])
        pos += R1PRO_FIELD_SIZES[n]
    return RawProprioLayout(name, fields, source)


# 2025: only the fields the state needs are listed (the vector has 256 values; the last field ends there).
R1PRO_2025 = RawProprioLayout(
    name="behavior-2025",
    fields=OrderedDict(
        arm_left_qpos=slice(158, 165),
        gripper_left_qpos=slice(193, 195),
        arm_right_qpos=slice(197, 204),
        gripper_right_qpos=slice(232, 234),
        trunk_qpos=slice(236, 240),
        base_qvel=slice(253, 256),
    ),
    source="BEHAVIOR-1K OmniGibson/omnigibson/learning/utils/eval_utils.py PROPRIOCEPTION_INDICES['R1Pro']",
)

R1PRO_2026 = layout_from_proprio_obs(
    PROPRIO_OBS_2026, "behavior-2026",
    "BEHAVIOR-1K OmniGibson/omnigibson/eval/r1pro.yaml proprio_obs (sizes: the R1Pro's proprioception fields)",
)

LAYOUTS: dict[int, RawProprioLayout] = {R1PRO_2025.dim: R1PRO_2025, R1PRO_2026.dim: R1PRO_2026}


def detect_layout(n_values: int) -> RawProprioLayout | None:
    """The evaluator layout for a proprio vector of this length (None: not a known raw layout)."""
    return LAYOUTS.get(int(n_values))
