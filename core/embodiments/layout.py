"""An embodiment's action/state vector as named parts, and the safe action derived from it.

Everything that needs to know "which numbers are the left arm" (the safe action, the simulator,
the bridges' shape checks, the service's never-blended gripper dims) reads an ``ActionLayout``
from ``xvla.core.embodiments``, so a change of embodiment is a change of a table, not a hunt
through the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class PartKind(str, Enum):
    """How the safe action treats a part when the policy is silent."""

    VELOCITY = "velocity"  # commanded velocities: safe value is zero (stop)
    POSITION = "position"  # joint position targets: safe value is the measured position (hold)
    GRIPPER = "gripper"  # gripper command: safe value is the last command (keep open/closed)


@dataclass(frozen=True)
class Part:
    name: str
    start: int
    stop: int
    kind: PartKind

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ActionLayout:
    """A fixed-size action vector cut into named parts.

    The 23-d R1Pro *state* that the simulator reports (and that X-VLA's BEHAVIOR
    fine-tunes take as proprio) uses the same layout, which is what makes
    ``idx_for_delta`` decoding (``action[i] += state[i]``) meaningful.
    """

    name: str
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        pos = 0
        for p in self.parts:
            if p.start != pos or p.stop <= p.start:
                raise ValueError(f"layout {self.name!r}: part {p.name!r} is not contiguous at index {pos}")
            pos = p.stop

    @property
    def dim(self) -> int:
        return self.parts[-1].stop

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"layout {self.name!r} has no part {name!r} (parts: {[p.name for p in self.parts]})")

    def indices(self, kind: PartKind) -> np.ndarray:
        """All vector indices whose part is of ``kind``."""
        idx = [i for p in self.parts if p.kind is kind for i in range(p.start, p.stop)]
        return np.asarray(idx, dtype=np.int64)

    def names(self) -> list[str]:
        """Per-dimension names, e.g. ``left_arm_3`` (``base_0`` .. ``right_gripper``)."""
        out: list[str] = []
        for p in self.parts:
            out += [p.name] if p.size == 1 else [f"{p.name}_{i}" for i in range(p.size)]
        return out


def safe_action(layout: ActionLayout, state: np.ndarray, last_action: np.ndarray | None) -> np.ndarray:
    """The action that keeps the robot where it is: stop the base, hold the joints, keep the grippers.

    Grippers keep the last *commanded* value rather than the measured one: a gripper
    closed on an object measures "partly open", and commanding that would drop the object.
    Without any previous command the measured gripper state is the best guess.
    """
    state = np.asarray(state, dtype=np.float32).reshape(-1)
    if state.shape[0] != layout.dim:
        raise ValueError(f"safe_action: state has {state.shape[0]} values, layout {layout.name!r} needs {layout.dim}")
    out = state.copy()
    out[layout.indices(PartKind.VELOCITY)] = 0.0
    grip = layout.indices(PartKind.GRIPPER)
    if last_action is not None:
        out[grip] = np.asarray(last_action, dtype=np.float32).reshape(-1)[grip]
    return out
