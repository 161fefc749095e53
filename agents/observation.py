"""Robot observation -> wire ``Observation``, shrunk to what the policy will actually use.

The policy says in ``Describe`` which cameras it reads and at what size; sending a
720x720 frame that the server would shrink to 224x224 anyway wastes 90% of the link.
So frames are resized here, cameras the policy does not read are left out, and poses
are sent only to policies that need them. Bytes before and after are reported.
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


class ObservationEncoder:
    def __init__(self, policy: pb.DescribeResponse | None = None, send_poses: bool | None = None) -> None:
        """``send_poses``: None = only for cameras whose spec says ``needs_pose``."""
        self.send_poses = send_poses
        self._specs: dict[str, pb.CameraSpec] = {}
        self.set_policy(policy)

    def set_policy(self, policy: pb.DescribeResponse | None) -> None:
        self._specs = {c.name: c for c in policy.cameras} if policy is not None else {}

    def camera_size(self, name: str) -> tuple[int, int] | None:
        spec = self._specs.get(name)
        return (int(spec.height), int(spec.width)) if spec is not None and spec.height and spec.width else None

    def encode(self, frame_index: int, obs: RobotObservation) -> EncodedFrame:
        t0 = time.perf_counter()
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
            size = self.camera_size(name)
            img = resize_rgb(src, *size) if size else as_rgb8(src)
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
        return EncodedFrame(msg, raw, msg.ByteSize(), time.perf_counter() - t0)
