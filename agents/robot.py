"""What the control loop needs from a robot: read an observation, apply an action.

Anything with these two methods (a real R1Pro driver, a simulator, a replay of a log)
can be driven by :class:`xvla.agents.control_loop.ControlLoop`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from xvla.core.embodiments import ActionLayout


@dataclass
class CameraPose:
    """A camera's pose at capture time, for geometry (DA3) policies.

    extrinsics: [4,4] world-to-camera (OpenCV convention), intrinsics: [3,3] in pixels
    of the frame as captured (the encoder rescales them with the frame).
    """

    extrinsics: np.ndarray
    intrinsics: np.ndarray


@dataclass
class RobotObservation:
    """One tick's sensor readings, at native resolution (resizing happens off the control thread)."""

    images: dict[str, np.ndarray]  # camera name -> HxWx3 (or x4) uint8
    state: np.ndarray  # [layout.dim] float32 proprio
    timestamp: float  # robot monotonic clock, seconds
    poses: dict[str, CameraPose] = field(default_factory=dict)
    instruction: str | None = None  # set to change the task instruction from this tick on


@runtime_checkable
class Robot(Protocol):
    """A robot the agent can drive. ``apply_action`` must not block longer than a tick.

    ``read_observation`` has no side effects: the loop reads once before its clock starts (a
    warm-up, never sent or acted on), then once per tick."""

    layout: ActionLayout

    def read_observation(self) -> RobotObservation: ...

    def apply_action(self, action: np.ndarray) -> None: ...
