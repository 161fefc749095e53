"""Robot observation -> wire ``Observation``, with what the policy will actually use.

Cameras the policy does not read are left out and poses are sent only to policies that need
them. Frames (``frames=``):

- ``"original"`` (default): the camera's own frame (alpha dropped). The server resizes it with
  the bundle's contract filter (pillow bicubic for X-VLA: ``runtime/preprocess.py``), so the
  model sees exactly the pixels its checkpoint was trained on, and the robot spends ~0.1 ms per
  frame. Costs link bandwidth: 2.9 MB per R1Pro tick (720x720 + 2x 480x480), ~88 MB/s at 30 Hz.
- ``"bicubic"``: shrink on the robot to ``Describe.cameras`` sizes with the same pillow filter the
  server uses (identical pixels, so identical ``image_input``), ~10x less on the link, ~5 ms of
  CPU per frame (in the encoder thread; pillow releases the GIL). Needs pillow on the robot.
- ``"numpy"``: the old numpy box+bilinear shrink (no pillow). Not the contract's filter: the model
  sees other pixels (mean abs 2.3 grey levels off on a 720x720 frame); kept for robots that can
  neither carry originals nor install pillow.

Measured in ``benchmarks/agent_frames.py`` (docs/agent.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from xvla.agents.imaging import as_rgb8, check_image, resize_rgb, scale_intrinsics
from xvla.agents.robot import RobotObservation
from xvla.core.tensors import numpy_to_tensor
from xvla.proto import policy_pb2 as pb


@dataclass
class EncodedFrame:
    observation: pb.Observation
    raw_bytes: int  # images + state as captured
    wire_bytes: int  # serialized Observation
    encode_s: float
    encode_cpu_s: float = 0.0  # this thread's CPU time (robust to preemption on a busy machine)


FRAME_MODES = ("original", "bicubic", "numpy")


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """What the server's preprocessing does to a frame (pillow BICUBIC, antialiased when shrinking)."""
    from PIL import Image  # only robots that choose frames="bicubic" need pillow

    img = as_rgb8(image)
    if img.shape[:2] == (height, width):
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), resample=Image.Resampling.BICUBIC))


class ObservationEncoder:
    def __init__(self, policy: pb.DescribeResponse | None = None, send_poses: bool | None = None,
                 frames: str = "original") -> None:
        """``send_poses``: None = only for cameras whose spec says ``needs_pose``; ``frames``: see the module doc."""
        if frames not in FRAME_MODES:
            raise ValueError(f"frames: {frames!r} unknown; choose from {list(FRAME_MODES)}")
        self.frames = frames
        self.send_poses = send_poses
        self._specs: dict[str, pb.CameraSpec] = {}
        self.set_policy(policy)

    def set_policy(self, policy: pb.DescribeResponse | None) -> None:
        self._specs = {c.name: c for c in policy.cameras} if policy is not None else {}

    def camera_size(self, name: str) -> tuple[int, int] | None:
        spec = self._specs.get(name)
        return (int(spec.height), int(spec.width)) if spec is not None and spec.height and spec.width else None

    def encode(self, frame_index: int, obs: RobotObservation) -> EncodedFrame:
        t0, c0 = time.perf_counter(), time.thread_time()
        state = np.asarray(obs.state, dtype=np.float32).reshape(-1)
        msg = pb.Observation(frame_index=int(frame_index), timestamp=float(obs.timestamp))
        numpy_to_tensor(state, msg.proprio)
        if obs.instruction:
            msg.instruction = obs.instruction
        raw = state.nbytes
        for name, image in obs.images.items():
            if self._specs and name not in self._specs:
                continue  # the policy does not read this camera
            src = check_image(image, field=f"images[{name!r}]")
            raw += src.nbytes
            size = self.camera_size(name) if self.frames != "original" else None
            if size is None:
                img = as_rgb8(src)
            elif self.frames == "bicubic":
                img = resize_bicubic(src, *size)
            else:
                img = resize_rgb(src, *size)
            cf = msg.cameras.add(name=name)
            cf.image.encoding = pb.RAW_RGB8
            cf.image.height, cf.image.width = img.shape[0], img.shape[1]
            cf.image.data = img.tobytes()
            spec = self._specs.get(name)
            want_pose = self.send_poses if self.send_poses is not None else bool(spec is not None and spec.needs_pose)
            pose = obs.poses.get(name)
            if want_pose and pose is not None:
                numpy_to_tensor(np.asarray(pose.extrinsics, dtype=np.float32).reshape(4, 4), cf.extrinsics)
                k = scale_intrinsics(pose.intrinsics, src.shape[:2], img.shape[:2])
                numpy_to_tensor(k, cf.intrinsics)
        size = msg.ByteSize()
        return EncodedFrame(msg, raw, size, time.perf_counter() - t0, time.thread_time() - c0)
