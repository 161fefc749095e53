"""numpy <-> ``xvla.policy.v1.Tensor``: the one codec every side uses (service, bridges, agent).

Tensors travel as little-endian C-order bytes. Decoding checks every inconsistency a client can
send (dtype, negative dims, byte count) and names the field, because it runs on untrusted input.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from xvla.core.errors import InputError
from xvla.core.limits import check_shape
from xvla.proto import policy_pb2 as pb

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


def _dtype_name(code: int) -> str:
    return pb.DType.Name(code) if code in pb.DType.values() else str(code)


def tensor_to_numpy(t: pb.Tensor, field: str = "tensor", allowed: Sequence[int] | None = None) -> np.ndarray:
    """A Tensor message -> read-only numpy array; every inconsistency is an InputError naming ``field``."""
    if t.dtype not in DTYPES:
        raise InputError(f"{field}.dtype", f"unsupported or unspecified dtype {_dtype_name(t.dtype)}")
    if allowed is not None and t.dtype not in allowed:
        raise InputError(f"{field}.dtype", f"expected one of {[pb.DType.Name(a) for a in allowed]}, got {_dtype_name(t.dtype)}")
    shape = check_shape(t.shape, field)  # rank, sign, element count before anything is allocated
    dtype = DTYPES[t.dtype]
    n = math.prod(shape)
    if len(t.data) != n * dtype.itemsize:
        raise InputError(f"{field}.data", f"shape {list(shape)} of {pb.DType.Name(t.dtype)} needs {n * dtype.itemsize} bytes, got {len(t.data)}")
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def numpy_to_tensor(arr: np.ndarray, out: pb.Tensor | None = None) -> pb.Tensor:
    """numpy -> Tensor (into ``out`` when given, so a per-tick message can be reused)."""
    a = np.asarray(arr)
    dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    code = _TO_WIRE.get(dtype.str)
    if code is None:
        raise ValueError(f"tensor dtype {a.dtype} cannot go on the wire (use one of {sorted(str(d) for d in DTYPES.values())})")
    t = out if out is not None else pb.Tensor()
    t.dtype = code
    del t.shape[:]
    t.shape.extend(a.shape)
    t.data = np.ascontiguousarray(a, dtype=DTYPES[code]).tobytes()
    return t


def encode_image_raw(img: np.ndarray) -> pb.Image:
    """HxWx3 uint8 -> a RAW_RGB8 Image message."""
    img = np.ascontiguousarray(img, np.uint8)
    return pb.Image(encoding=pb.RAW_RGB8, height=img.shape[0], width=img.shape[1], data=img.tobytes())
