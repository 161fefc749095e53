"""Wire messages (xvla.policy.v1) <-> numpy, with validation that names the offending field.

Every check here runs on every observation, on the event loop, so it is cheap: structure,
sizes, dtypes, finiteness. Image decoding (JPEG/PNG) and resizing happen later, in a worker
thread, and only for the observations a chunk is planned from.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from xvla.core.limits import bounded, check_image_header, check_instruction, check_shape
from xvla.proto import policy_pb2 as pb
from xvla.runtime.preprocess import MAX_IMAGE_SIDE, CameraInput, InputError, decode_image

DTYPES: dict[int, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
    pb.UINT8: np.dtype("u1"),
    pb.BOOL: np.dtype("?"),
}
_TO_WIRE = {v.str: k for k, v in DTYPES.items()}

ENCODINGS = {pb.RAW_RGB8: "raw_rgb8", pb.JPEG: "jpeg", pb.PNG: "png"}
_MAGIC = {pb.JPEG: b"\xff\xd8\xff", pb.PNG: b"\x89PNG\r\n\x1a\n"}


def tensor_to_numpy(t: pb.Tensor, field: str, allowed: Sequence[int] | None = None) -> np.ndarray:
    """A Tensor message -> read-only numpy array; every inconsistency is an InputError naming ``field``."""
    if t.dtype not in DTYPES:
        raise InputError(f"{field}.dtype", f"unsupported or unspecified dtype {pb.DType.Name(t.dtype) if t.dtype in pb.DType.values() else t.dtype}")
    if allowed is not None and t.dtype not in allowed:
        raise InputError(f"{field}.dtype", f"expected one of {[pb.DType.Name(a) for a in allowed]}, got {pb.DType.Name(t.dtype)}")
    shape = check_shape(t.shape, field)  # rank, sign, element count before anything is allocated
    dtype = DTYPES[t.dtype]
    n = math.prod(shape)
    if len(t.data) != n * dtype.itemsize:
        raise InputError(f"{field}.data", f"shape {list(shape)} of {pb.DType.Name(t.dtype)} needs {n * dtype.itemsize} bytes, got {len(t.data)}")
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def numpy_to_tensor(arr: np.ndarray) -> pb.Tensor:
    arr = np.asarray(arr)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    code = _TO_WIRE.get(dtype.str)
    if code is None:
        raise ValueError(f"dtype {arr.dtype} cannot go on the wire")
    return pb.Tensor(dtype=code, shape=list(arr.shape), data=np.ascontiguousarray(arr, dtype=dtype).tobytes())


def check_observation(obs: pb.Observation, camera_names: Sequence[str], accepted_proprio: Sequence[int],
                      needs_pose: bool, field: str = "observation") -> np.ndarray:
    """Cheap per-tick validation. Returns the proprio as float32 numpy (not yet mapped to the state)."""
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
                arr = tensor_to_numpy(getattr(cam, name), f"{f}.{name}", (pb.FLOAT32, pb.FLOAT64))
                if arr.shape != shape:
                    raise InputError(f"{f}.{name}.shape", f"expected {list(shape)}, got {list(arr.shape)}")
                if not np.all(np.isfinite(arr)):
                    raise InputError(f"{f}.{name}", "contains NaN or Inf")
            elif needs_pose:
                raise InputError(f"{f}.{name}", "this policy has a geometry encoder: camera poses are required")
    if obs.instruction:
        check_instruction(obs.instruction, f"{field}.instruction")
    if not obs.HasField("proprio"):
        raise InputError(f"{field}.proprio", f"required: shape one of {[[d] for d in accepted_proprio]}")
    p = tensor_to_numpy(obs.proprio, f"{field}.proprio", (pb.FLOAT32, pb.FLOAT64))
    if p.ndim != 1 or p.shape[0] not in accepted_proprio:
        raise InputError(f"{field}.proprio.shape", f"expected one of {[[d] for d in accepted_proprio]}, got {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise InputError(f"{field}.proprio", f"contains NaN or Inf at index {int(np.flatnonzero(~np.isfinite(p))[0])}")
    return p.astype(np.float32)


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


def encode_image_raw(img: np.ndarray) -> pb.Image:
    img = np.ascontiguousarray(img, np.uint8)
    return pb.Image(encoding=pb.RAW_RGB8, height=img.shape[0], width=img.shape[1], data=img.tobytes())
