"""A simulated Galaxea R1Pro: kinematic, deterministic, cheap enough to render at 30 Hz.

Not physics: joints slew toward their position targets at a bounded speed, the base
integrates its commanded velocities in the plane, grippers move toward their command.
It exists to exercise the whole robot-side path at the real robot's shapes and rates:
a 720x720 head camera and two 480x480 wrist cameras whose pictures change with the
robot's state, a 23-d state in the action layout, and camera poses (world-to-camera,
OpenCV axes) plus intrinsics for geometry policies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from xvla.agents.robot import CameraPose, RobotObservation
from xvla.core.embodiments import ActionLayout
from xvla.core.embodiments.r1pro import R1PRO, R1PRO_CAMERAS

# Intrinsics of the BEHAVIOR-1K R1Pro cameras at their native sizes (fx = fy, centred).
HEAD_FOCAL_PX = 306.0  # at 720x720
WRIST_FOCAL_PX = 388.6639  # at 480x480


@dataclass
class SimR1ProConfig:
    head_size: tuple[int, int] = (720, 720)
    wrist_size: tuple[int, int] = (480, 480)
    dt_s: float = 1.0 / 30.0  # simulated time per applied action
    max_joint_speed: float = 1.5  # rad/s
    gripper_speed: float = 4.0  # command units per second
    seed: int = 0


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Camera axes (OpenCV: x right, y down, z forward) expressed in a frame looking along +x.
_CAM_FROM_FORWARD = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _se3(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def _world_to_camera(cam_to_world: np.ndarray) -> np.ndarray:
    r, t = cam_to_world[:3, :3], cam_to_world[:3, 3]
    return _se3(r.T, -r.T @ t)


class SimR1Pro:
    """Implements :class:`xvla.agents.robot.Robot`."""

    layout: ActionLayout = R1PRO
    cameras = R1PRO_CAMERAS

    def __init__(self, config: SimR1ProConfig | None = None) -> None:
        self.config = c = config or SimR1ProConfig()
        rng = np.random.default_rng(c.seed)
        L = self.layout
        self.q = np.zeros(L.dim, dtype=np.float64)  # measured positions (base part unused)
        self.q[L.part("torso").slice] = rng.uniform(-0.2, 0.2, 4)
        self.q[L.part("left_arm").slice] = rng.uniform(-0.5, 0.5, 7)
        self.q[L.part("right_arm").slice] = rng.uniform(-0.5, 0.5, 7)
        self.target = self.q.copy()
        self.base_vel = np.zeros(3)  # commanded x, y, yaw velocities (robot frame)
        self.base_pose = np.zeros(3)  # x, y, yaw in the world
        self.steps = 0
        self.last_action: np.ndarray | None = None
        self._textures = {
            "head": self._texture(c.head_size, rng),
            "left_wrist": self._texture(c.wrist_size, rng),
            "right_wrist": self._texture(c.wrist_size, rng),
        }

    # -- Robot protocol -------------------------------------------------------------
    def read_observation(self) -> RobotObservation:
        return RobotObservation(
            images={name: self._render(name) for name in self.cameras},
            state=self.state(),
            timestamp=time.monotonic(),
            poses=self.poses(),
        )

    def apply_action(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != self.layout.dim:
            raise ValueError(f"action: {a.shape[0]} values, the R1Pro takes {self.layout.dim}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action: contains NaN or inf")
        L, c = self.layout, self.config
        self.last_action = a.astype(np.float32)
        base = L.part("base").slice
        self.base_vel = a[base].copy()
        vx, vy, wz = self.base_vel
        yaw = self.base_pose[2]
        self.base_pose += c.dt_s * np.array([vx * np.cos(yaw) - vy * np.sin(yaw), vx * np.sin(yaw) + vy * np.cos(yaw), wz])
        self.target = a.copy()
        step = np.full(L.dim, c.max_joint_speed * c.dt_s)
        for g in ("left_gripper", "right_gripper"):
            step[L.part(g).slice] = c.gripper_speed * c.dt_s
        moving = np.ones(L.dim, dtype=bool)
        moving[base] = False
        delta = np.clip(self.target - self.q, -step, step)
        self.q[moving] += delta[moving]
        self.steps += 1

    # -- state and sensors ----------------------------------------------------------
    def state(self) -> np.ndarray:
        s = self.q.astype(np.float32)
        s[self.layout.part("base").slice] = self.base_vel
        return s

    def poses(self) -> dict[str, CameraPose]:
        L = self.layout
        x, y, yaw = self.base_pose
        world_base = _se3(_rot_z(yaw), np.array([x, y, 0.0]))
        torso = self.q[L.part("torso").slice]
        head_h = 1.55 + 0.1 * np.tanh(torso[0])
        # Camera-to-base rotation: the columns are the camera's axes seen from a forward-looking frame.
        head = world_base @ _se3(_CAM_FROM_FORWARD.T, np.array([0.1, 0.0, head_h]))
        out = {"head": CameraPose(_world_to_camera(head), self._k(self.config.head_size, HEAD_FOCAL_PX))}
        for side, sign in (("left", 1.0), ("right", -1.0)):
            q = self.q[L.part(f"{side}_arm").slice]
            p = np.array([0.45 + 0.15 * np.sin(q[0]), sign * (0.25 + 0.1 * np.sin(q[1])), 0.95 + 0.15 * np.sin(q[2])])
            cam = world_base @ _se3(_rot_z(0.5 * np.sin(q[6])) @ _CAM_FROM_FORWARD.T, p)
            out[f"{side}_wrist"] = CameraPose(_world_to_camera(cam), self._k(self.config.wrist_size, WRIST_FOCAL_PX))
        return out

    @staticmethod
    def _k(size: tuple[int, int], focal: float) -> np.ndarray:
        h, w = size
        return np.array([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]], dtype=np.float32)

    @staticmethod
    def _texture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """A fixed backdrop: gradients plus a checkerboard, so motion is visible after resizing."""
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        checker = (((yy // 40) + (xx // 40)) % 2) * 40
        tint = rng.integers(0, 60, 3)
        img = np.stack([xx * 200 // w + checker, yy * 200 // h + checker, (xx + yy) * 100 // (h + w) + checker], -1)
        return (img + tint).clip(0, 255).astype(np.uint8)

    def _render(self, name: str) -> np.ndarray:
        L = self.layout
        tex = self._textures[name]
        h, w = tex.shape[:2]
        if name == "head":  # the scene slides with the base
            dx = int(self.base_pose[0] * 200 + self.base_pose[2] * 300) % w
            dy = int(self.base_pose[1] * 200) % h
            joints, grip = self.q[L.part("torso").slice], 0.0
        else:
            side = name.split("_")[0]
            joints = self.q[L.part(f"{side}_arm").slice]
            grip = float(self.q[L.part(f"{side}_gripper").slice][0])
            dx, dy = int(joints[0] * 100) % w, int(joints[1] * 100) % h
        img = np.roll(tex, (dy, dx), axis=(0, 1))
        # A marker that moves with the joints, and a bar whose width shows the gripper.
        cy = int((0.5 + 0.3 * np.sin(joints[-1])) * h)
        cx = int((0.5 + 0.3 * np.sin(joints[-2])) * w)
        s = max(4, h // 12)
        img[max(0, cy - s) : cy + s, max(0, cx - s) : cx + s] = (230, 40, 40)
        bar = int(np.clip((grip + 1.0) / 2.0, 0.0, 1.0) * (w - 1)) + 1
        img[h - h // 20 :, :bar] = (40, 40, 230)
        return img
