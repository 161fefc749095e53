"""The array encodings other robot stacks put on the wire, decoded without pickle.

- openpi / BEHAVIOR-1K msgpack: ``{b"__ndarray__": True, b"data", b"dtype", b"shape"}``
  and ``{b"__npgeneric__": True, b"data", b"dtype"}``; BEHAVIOR's harness adds
  ``{b"__torch__": True, ...}`` for tensors (decoded to numpy here: no torch needed).
- GR00T msgpack: ``{"__ndarray_class__": True, "as_npy": <.npy bytes>}`` (loaded with
  ``allow_pickle=False``).
- X-VLA's HTTP clients use ``json_numpy``: ``{"__numpy__": <base64>, "dtype", "shape"}``,
  usually as a JSON *string* inside the JSON payload.

Every decoder checks that the byte count matches dtype x shape and refuses object
dtypes, so a malformed frame is an error message, never a crash or code execution.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from enum import Enum
from typing import Any

import msgpack
import numpy as np


class WireError(ValueError):
    """Input that cannot be decoded; the message says what and where."""


INT32_MAX = 2**31 - 1


def as_array(value: Any, key: str, dtype: Any = None) -> np.ndarray:
    """``np.asarray`` for client data: ragged lists, overflowing ints and the like are a WireError naming ``key``."""
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"{key}: not a regular numeric array ({str(e)[:80]})") from None


def as_int32(value: Any, key: str, lo: int = -INT32_MAX - 1) -> int:
    """One integer within the wire contract's int32 (a bigger one would overflow the protobuf field)."""
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"{key}: not an integer ({str(e)[:60]})") from None
    if not lo <= v <= INT32_MAX:
        raise WireError(f"{key}: {v:.3g} is outside [{lo}, {INT32_MAX}]" if abs(v) > 1e12 else
                        f"{key}: {v} is outside [{lo}, {INT32_MAX}]")
    return v


class ArrayStyle(str, Enum):
    OPENPI = "openpi"  # __ndarray__ maps (openpi, BEHAVIOR-1K)
    GR00T = "gr00t"  # __ndarray_class__ + .npy bytes


_REFUSED_KINDS = ("O", "V", "c", "M", "m")


def _k(d: dict, name: str) -> Any:
    """Map lookup that accepts bytes or str keys (openpi packs its markers as bytes)."""
    if name in d:
        return d[name]
    b = name.encode()
    if b in d:
        return d[b]
    raise WireError(f"encoded array is missing its {name!r} field")


def _has(d: dict, name: str) -> bool:
    return name in d or name.encode() in d


def _dtype(spec: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise WireError(f"array dtype must be a string, got {type(spec).__name__}")
    try:
        dt = np.dtype(spec)
    except TypeError as e:
        raise WireError(f"unknown array dtype {spec!r}") from e
    if dt.kind in _REFUSED_KINDS:
        raise WireError(f"array dtype {spec!r} is not accepted")
    return dt


def _shape(spec: Any) -> tuple[int, ...]:
    if not isinstance(spec, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in spec):
        raise WireError(f"array shape must be a list of non-negative integers, got {spec!r}")
    return tuple(spec)


def array_from_bytes(data: Any, dtype: Any, shape: Any) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"array data must be bytes, got {type(data).__name__}")
    dt, sh = _dtype(dtype), _shape(shape)
    need = int(np.prod(sh, dtype=np.int64)) * dt.itemsize if sh else dt.itemsize
    if len(data) != need:
        raise WireError(f"array of shape {list(sh)} and dtype {dt.str} needs {need} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(sh)


def _npy(data: Any) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray)):
        raise WireError("__ndarray_class__: as_npy must be bytes")
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - np.load raises many types on garbage
        raise WireError(f"__ndarray_class__: not a valid .npy payload ({e})") from e
    if a.dtype.kind in _REFUSED_KINDS:
        raise WireError(f"array dtype {a.dtype} is not accepted")
    return a


def _msgpack_hook(obj: dict) -> Any:
    if _has(obj, "__ndarray__"):
        return array_from_bytes(_k(obj, "data"), _k(obj, "dtype"), _k(obj, "shape"))
    if _has(obj, "__npgeneric__"):
        dt = _dtype(_k(obj, "dtype"))
        try:
            return dt.type(_k(obj, "data"))
        except (TypeError, ValueError) as e:
            raise WireError(f"__npgeneric__: bad value for {dt}") from e
    if _has(obj, "__torch__"):  # BEHAVIOR-1K's harness may send tensors: same bytes, torch dtype names
        return array_from_bytes(_k(obj, "data"), _k(obj, "dtype"), _k(obj, "shape"))
    if _has(obj, "__ndarray_class__"):
        return _npy(_k(obj, "as_npy"))
    return obj


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode a msgpack frame with numpy arrays (any of the styles above)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary msgpack frame, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(data, object_hook=_msgpack_hook, raw=False, strict_map_key=False)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types on garbage
        raise WireError(f"not a valid msgpack message ({type(e).__name__}: {e})") from e


def _pack_openpi(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in _REFUSED_KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _pack_gr00t(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buf.getvalue()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def packb(obj: Any, style: ArrayStyle = ArrayStyle.OPENPI) -> bytes:
    return msgpack.packb(obj, default=_pack_openpi if style is ArrayStyle.OPENPI else _pack_gr00t, use_bin_type=True)


def uses_style(obj: Any, style: ArrayStyle) -> bool:
    """Whether a raw (undecoded) msgpack frame uses ``style`` for its arrays (to answer in kind)."""
    marker = b"__ndarray_class__" if style is ArrayStyle.GR00T else b"__ndarray__"
    return isinstance(obj, (bytes, bytearray)) and marker in obj


# -------------------------------------------------------------------------------- json_numpy


def _json_hook(obj: dict) -> Any:
    if "__numpy__" in obj:
        try:
            data = base64.b64decode(obj["__numpy__"], validate=True)
        except (binascii.Error, TypeError, ValueError) as e:
            raise WireError("__numpy__: data is not valid base64") from e
        shape = obj.get("shape", [])
        a = array_from_bytes(data, obj.get("dtype"), shape)
        return a if a.ndim else a[()]
    return obj


def json_numpy_value(value: Any, field: str) -> Any:
    """Decode one payload value the way X-VLA's server does: a json_numpy string, a decoded map, or a plain list."""
    try:
        if isinstance(value, str):
            return json.loads(value, object_hook=_json_hook)
        if isinstance(value, dict):
            return _json_hook(value)
    except WireError as e:
        raise WireError(f"{field}: {e}") from e
    except json.JSONDecodeError as e:
        raise WireError(f"{field}: not a json_numpy value ({e.msg})") from e
    return value


def json_numpy_dumps(array: np.ndarray) -> str:
    """Encode like ``json_numpy.dumps`` (for tests and clients that want compact arrays)."""
    a = np.ascontiguousarray(array)
    return json.dumps({"__numpy__": base64.b64encode(a.tobytes()).decode("ascii"), "dtype": a.dtype.str, "shape": list(a.shape)})
