"""numpy <-> ``xvla.policy.v1.Tensor`` for the robot side.

The runtime has its own converter, but the agent must install without the serving
stack, so this small one lives here. Tensors travel as little-endian C-order bytes.
"""

from __future__ import annotations

import numpy as np

from xvla.proto import policy_pb2 as pb

_TO_PB = {
    np.dtype("float32"): pb.FLOAT32,
    np.dtype("float64"): pb.FLOAT64,
    np.dtype("float16"): pb.FLOAT16,
    np.dtype("int32"): pb.INT32,
    np.dtype("int64"): pb.INT64,
    np.dtype("uint8"): pb.UINT8,
    np.dtype("bool"): pb.BOOL,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


def to_tensor(array: np.ndarray, out: pb.Tensor | None = None) -> pb.Tensor:
    a = np.asarray(array)
    dt = a.dtype.newbyteorder("=") if a.dtype.byteorder not in ("=", "|") else a.dtype
    if dt not in _TO_PB:
        raise ValueError(f"tensor dtype {a.dtype} is not supported on the wire (use one of {sorted(map(str, _TO_PB))})")
    a = np.ascontiguousarray(a, dtype=dt.newbyteorder("<"))
    t = out if out is not None else pb.Tensor()
    t.dtype = _TO_PB[dt]
    del t.shape[:]
    t.shape.extend(a.shape)
    t.data = a.tobytes()
    return t


def from_tensor(t: pb.Tensor, field: str = "tensor") -> np.ndarray:
    """Decode a Tensor, checking that its byte count matches its shape (names ``field`` on error)."""
    if t.dtype not in _FROM_PB:
        raise ValueError(f"{field}: unsupported dtype {t.dtype}")
    dt = _FROM_PB[t.dtype].newbyteorder("<")
    shape = tuple(int(s) for s in t.shape)
    n = int(np.prod(shape)) if shape else 1
    if len(t.data) != n * dt.itemsize:
        raise ValueError(f"{field}: {len(t.data)} bytes do not match shape {list(shape)} of {dt.name}")
    return np.frombuffer(t.data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=False)
