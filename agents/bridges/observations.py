"""Observation dicts from other stacks -> the wire ``Observation``.

Two dialects are accepted:

- BEHAVIOR-1K / R1Pro keys (what the OmniGibson harness sends over the openpi protocol):
  ``robot_r1::robot_r1:zed_link:Camera:0::rgb`` (head, 720x720),
  ``robot_r1::robot_r1:{left,right}_realsense_link:Camera:0::rgb`` (wrists, 480x480),
  ``robot_r1::proprio`` (the raw 256-d vector; the service extracts the 23-d state),
  ``task_id``. Other keys (depth, segmentation, ...) are ignored.
- A neutral form: ``{"images": {camera: HxWx3}, "proprio": [D], "task_id"?, "instruction"?}``.

Frames are resized to the policy's camera sizes here, so the gRPC hop carries small
frames. Every check names the offending key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from xvla.agents.bridges.codecs import WireError, as_array, as_int32
from xvla.agents.observation import ObservationEncoder
from xvla.agents.robot import RobotObservation
from xvla.core.errors import InputError
from xvla.core.limits import check_image_size
from xvla.proto import policy_pb2 as pb

BEHAVIOR_CAMERA_KEYS: dict[str, str] = {
    "head": "robot_r1::robot_r1:zed_link:Camera:0::rgb",
    "left_wrist": "robot_r1::robot_r1:left_realsense_link:Camera:0::rgb",
    "right_wrist": "robot_r1::robot_r1:right_realsense_link:Camera:0::rgb",
}
BEHAVIOR_PROPRIO_KEY = "robot_r1::proprio"
BEHAVIOR_PROPRIO_DIM = 256
TASK_ID_KEY = "task_id"
ACTION_CHUNK_KEY = "__action_chunk_size__"


@dataclass
class PolicyView:
    """What a bridge needs to know about the served policy (from Describe)."""

    cameras: tuple[str, ...]
    action_dim: int
    horizon: int
    accepted_proprio_dims: tuple[int, ...]
    describe: pb.DescribeResponse

    @classmethod
    def from_describe(cls, d: pb.DescribeResponse) -> PolicyView:
        return cls(
            cameras=tuple(c.name for c in d.cameras),
            action_dim=int(d.action_space.dim),
            horizon=int(d.horizon),
            accepted_proprio_dims=tuple(int(x) for x in d.action_space.accepted_proprio_dims),
            describe=d,
        )


@dataclass
class BridgeObservation:
    observation: pb.Observation  # frame_index left for the session to set
    task_id: int | None
    batched: bool  # the client sent a leading batch axis of 1 (answer in kind)
    raw_bytes: int
    wire_bytes: int


def _str_keys(obs: dict) -> dict:
    return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in obs.items()}


def _unbatch(a: np.ndarray, key: str, ndim: int) -> tuple[np.ndarray, bool]:
    if a.ndim == ndim + 1:
        if a.shape[0] != 1:
            raise WireError(f"{key}: a batch of {a.shape[0]} observations is not supported; use one connection per environment")
        return a[0], True
    return a, False


def _image(value: Any, key: str) -> tuple[np.ndarray, bool]:
    if not isinstance(value, np.ndarray):
        raise WireError(f"{key}: expected an image array, got {type(value).__name__}")
    a, batched = _unbatch(value, key, 3)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise WireError(f"{key}: expected an HxWx3 (RGB) or HxWx4 (RGBA) image, got shape {list(value.shape)}")
    if a.dtype != np.uint8:
        raise WireError(f"{key}: expected uint8 pixels, got {a.dtype}")
    try:  # a 1x9,000,000 frame would stall the resize for minutes: refused before any work
        check_image_size(a.shape[0], a.shape[1], key)
    except InputError as e:
        raise WireError(str(e)) from None
    return a, batched


def _proprio(value: Any, key: str, accepted: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    try:
        a = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise WireError(f"{key}: not an array ({e})") from e
    if a.dtype.kind not in "fiub":
        raise WireError(f"{key}: expected numbers, got dtype {a.dtype}")
    a, batched = _unbatch(a, key, 1)
    if a.ndim != 1:
        raise WireError(f"{key}: expected a vector, got shape {list(np.shape(value))}")
    if accepted and a.shape[0] not in accepted:
        raise WireError(f"{key}: {a.shape[0]} values, the policy accepts {list(accepted)}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise WireError(f"{key}: contains NaN or inf")
    return a, batched


def _task_id(value: Any) -> int | None:
    if value is None:
        return None
    a = as_array(value, TASK_ID_KEY)
    if a.size != 1 or a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.isfinite(a).all()
                                                        and float(a.reshape(-1)[0]).is_integer()):
        raise WireError(f"{TASK_ID_KEY}: expected one integer, got {value!r:.60}")
    return as_int32(a.reshape(-1)[0], TASK_ID_KEY, lo=-1)


def translate(obs: Any, policy: PolicyView, encoder: ObservationEncoder) -> BridgeObservation:
    """Validate and convert one observation dict (either dialect)."""
    if not isinstance(obs, dict):
        raise WireError(f"an observation must be a map, got {type(obs).__name__}")
    obs = _str_keys(obs)
    images: dict[str, np.ndarray] = {}
    batched: set[bool] = set()
    if "images" in obs or "proprio" in obs:  # neutral dialect
        cams = obs.get("images")
        if not isinstance(cams, dict):
            raise WireError("images: expected a map of camera name -> image")
        cams = _str_keys(cams)
        for name in policy.cameras or tuple(cams):
            if name not in cams:
                raise WireError(f"images: missing camera {name!r} (the policy reads {list(policy.cameras)})")
            images[name], b = _image(cams[name], f"images[{name!r}]")
            batched.add(b)
        if "proprio" not in obs:
            raise WireError("missing observation key 'proprio'")
        proprio, b = _proprio(obs["proprio"], "proprio", policy.accepted_proprio_dims)
        instruction = obs.get("instruction", obs.get("prompt"))
        if instruction is not None and not isinstance(instruction, str):
            raise WireError("instruction: expected a string")
    else:  # BEHAVIOR-1K dialect
        wanted = [n for n in (policy.cameras or tuple(BEHAVIOR_CAMERA_KEYS)) if n in BEHAVIOR_CAMERA_KEYS]
        for name in wanted:
            key = BEHAVIOR_CAMERA_KEYS[name]
            if key not in obs:
                raise WireError(f"missing observation key {key!r} ({name} camera)")
            images[name], b = _image(obs[key], key)
            batched.add(b)
        if BEHAVIOR_PROPRIO_KEY not in obs:
            raise WireError(f"missing observation key {BEHAVIOR_PROPRIO_KEY!r}")
        proprio, b = _proprio(obs[BEHAVIOR_PROPRIO_KEY], BEHAVIOR_PROPRIO_KEY, policy.accepted_proprio_dims)
        instruction = None
    batched.add(b)
    if len(batched) > 1:
        raise WireError("observation mixes batched and unbatched arrays")
    task_id = _task_id(obs.get(TASK_ID_KEY))
    ro = RobotObservation(images=images, state=proprio, timestamp=time.monotonic(), instruction=instruction)
    try:
        enc = encoder.encode(0, ro)
    except ValueError as e:
        raise WireError(str(e)) from e
    return BridgeObservation(enc.observation, task_id, batched.pop(), enc.raw_bytes, enc.wire_bytes)


def chunk_size(obs: dict, horizon: int) -> int | None:
    """Pop and validate ``__action_chunk_size__`` (None when absent)."""
    if ACTION_CHUNK_KEY not in obs and ACTION_CHUNK_KEY.encode() not in obs:
        return None
    v = obs.pop(ACTION_CHUNK_KEY, None)
    if v is None:
        v = obs.pop(ACTION_CHUNK_KEY.encode(), None)
    a = as_array(v, ACTION_CHUNK_KEY)
    if a.size != 1 or a.dtype.kind not in "iu":
        raise WireError(f"{ACTION_CHUNK_KEY}: expected a positive integer, got {v!r:.40}")
    k = int(a.reshape(-1)[0])
    if not 1 <= k <= max(1, horizon):
        raise WireError(f"{ACTION_CHUNK_KEY}: {k} is outside 1..{horizon} (the policy's horizon)")
    return k
