"""Observation messages (xvla.policy.v1) -> numpy, with validation that names the offending field.

Every check here runs on every observation, on the event loop, so it is cheap: structure,
sizes, dtypes, finiteness. Image decoding (JPEG/PNG) and resizing happen later, in a worker
thread, and only for the observations a chunk is planned from.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xvla.core.errors import InputError
from xvla.core.images import MAX_IMAGE_SIDE, CameraInput, decode_image
from xvla.core.limits import bounded, check_image_header, check_instruction
from xvla.core.pose import check_pose
from xvla.core.tensors import tensor_to_numpy
from xvla.proto import policy_pb2 as pb
from xvla.runtime.policies.base import ObservationInput, PolicySpec

ENCODINGS = {pb.RAW_RGB8: "raw_rgb8", pb.JPEG: "jpeg", pb.PNG: "png"}
_MAGIC = {pb.JPEG: b"\xff\xd8\xff", pb.PNG: b"\x89PNG\r\n\x1a\n"}


def check_observation(obs: pb.Observation, spec: PolicySpec, field: str = "observation") -> np.ndarray:
    """Cheap per-tick validation against the policy's spec; the only validation an observation gets.

    Returns the proprio as float32 numpy (not yet mapped to the state)."""
    camera_names, accepted_proprio, needs_pose = spec.camera_names, spec.proprio_dims, spec.needs_pose
    seen: set[str] = set()
    if not obs.cameras:
        raise InputError(f"{field}.cameras", f"at least one camera is required (cameras: {list(camera_names)})")
    for i, cam in enumerate(obs.cameras):
        f = f"{field}.cameras[{i}]"
        if cam.name not in camera_names:
            raise InputError(f"{f}.name", f"unknown camera {bounded(repr(cam.name), 80)}; "
                                          f"this policy's cameras are {list(camera_names)}")
        if cam.name in seen:
            raise InputError(f"{f}.name", f"camera {cam.name!r} sent twice")
        seen.add(cam.name)
        img = cam.image
        if img.encoding not in ENCODINGS:
            raise InputError(f"{f}.image.encoding", "must be RAW_RGB8, JPEG or PNG")
        if img.encoding == pb.RAW_RGB8:
            if not (0 < img.height <= MAX_IMAGE_SIDE and 0 < img.width <= MAX_IMAGE_SIDE):
                raise InputError(f"{f}.image.height", f"RAW_RGB8 needs 0 < height, width <= {MAX_IMAGE_SIDE}, got {img.height}x{img.width}")
            if len(img.data) != img.height * img.width * 3:
                raise InputError(f"{f}.image.data", f"RAW_RGB8 {img.height}x{img.width} needs {img.height * img.width * 3} bytes, got {len(img.data)}")
        elif not img.data.startswith(_MAGIC[img.encoding]):
            # a full decode happens only for the observations a chunk is planned from; the
            # signature check catches wrong/garbled payloads on every tick at no cost
            raise InputError(f"{f}.image.data", f"not a {ENCODINGS[img.encoding].upper()} file ({len(img.data)} bytes)")
        else:  # the declared size, from the header: a decompression bomb is refused before any decode
            check_image_header(img.data, ENCODINGS[img.encoding], f"{f}.image")
        for name, shape in (("extrinsics", (4, 4)), ("intrinsics", (3, 3))):
            if cam.HasField(name):
                check_pose(tensor_to_numpy(getattr(cam, name), f"{f}.{name}", (pb.FLOAT32, pb.FLOAT64)), shape, f"{f}.{name}")
            elif needs_pose:
                raise InputError(f"{f}.{name}", "this policy has a geometry encoder: camera poses are required")
    if obs.instruction:
        check_instruction(obs.instruction, f"{field}.instruction")
    if not obs.HasField("proprio"):
        raise InputError(f"{field}.proprio", f"required: shape one of {[[d] for d in accepted_proprio]}")
    return check_proprio(tensor_to_numpy(obs.proprio, f"{field}.proprio", (pb.FLOAT32, pb.FLOAT64)),
                         accepted_proprio, f"{field}.proprio")


def check_proprio(p: np.ndarray, accepted: Sequence[int], field: str) -> np.ndarray:
    """A 1-D finite float vector of an accepted length -> float32."""
    if not np.issubdtype(p.dtype, np.floating):
        raise InputError(f"{field}.dtype", f"expected float32 or float64, got {p.dtype}")
    if p.ndim != 1 or p.shape[0] not in accepted:
        raise InputError(f"{field}.shape", f"expected one of {[[d] for d in accepted]}, got {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise InputError(field, f"contains NaN or Inf at index {int(np.flatnonzero(~np.isfinite(p))[0])}")
    return p.astype(np.float32)


def check_input(observation: ObservationInput, spec: PolicySpec, field: str = "observation") -> ObservationInput:
    """The same checks for an observation that did not come over the wire (``XVLAPolicy.act``, bridges in-process)."""
    if not observation.cameras:
        raise InputError(f"{field}.cameras", f"at least one camera is required (cameras: {list(spec.camera_names)})")
    cameras = {}
    for name, cam in observation.cameras.items():
        f = f"{field}.cameras[{name}]"
        if name not in spec.camera_names:
            raise InputError(f"{f}.name", f"unknown camera {name!r}; this policy's cameras are {list(spec.camera_names)}")
        img = np.asarray(cam.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"{f}.image", f"expected HxWx3 uint8 RGB, got {list(img.shape)} {img.dtype}")
        ext = check_pose(None if cam.extrinsics is None else np.asarray(cam.extrinsics), (4, 4), f"{f}.extrinsics")
        intr = check_pose(None if cam.intrinsics is None else np.asarray(cam.intrinsics), (3, 3), f"{f}.intrinsics")
        if spec.needs_pose and (ext is None or intr is None):
            raise InputError(f"{f}.extrinsics", "this policy has a geometry encoder: every camera needs extrinsics and intrinsics")
        cameras[name] = CameraInput(img, ext, intr)
    proprio = check_proprio(np.asarray(observation.proprio), spec.proprio_dims, f"{field}.proprio")
    return ObservationInput(cameras, proprio, observation.instruction)


def decode_cameras(obs: pb.Observation, field: str = "observation") -> dict[str, CameraInput]:
    """Decodes every camera of an already-checked observation (worker thread: JPEG/PNG decoding is slow)."""
    out = {}
    for i, cam in enumerate(obs.cameras):
        img = decode_image(ENCODINGS[cam.image.encoding], cam.image.data, cam.image.height, cam.image.width,
                           f"{field}.cameras[{i}].image")
        ext = tensor_to_numpy(cam.extrinsics, "extrinsics").astype(np.float32) if cam.HasField("extrinsics") else None
        intr = tensor_to_numpy(cam.intrinsics, "intrinsics").astype(np.float32) if cam.HasField("intrinsics") else None
        out[cam.name] = CameraInput(img, ext, intr)
    return out
