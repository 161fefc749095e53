"""Array encodings of the peer protocols (our own implementations of the published formats)."""

from __future__ import annotations

import base64
import io
import json
import pickle
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- json_numpy style


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__numpy__": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii"),
                "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _json_hook(d: dict) -> Any:
    if "__numpy__" in d:
        return np.frombuffer(base64.b64decode(d["__numpy__"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return d


def json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default).encode()


def json_loads(data: bytes) -> Any:
    return json.loads(data, object_hook=_json_hook)


# ----------------------------------------------------------------------------- msgpack + npy


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray_class__": True, "as_npy": _npy_bytes(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not msgpack serialisable: {type(obj).__name__}")


def _msgpack_hook(d: dict) -> Any:
    if d.get("__ndarray_class__"):
        return np.load(io.BytesIO(d["as_npy"]), allow_pickle=False)
    return d


def msgpack_dumps(obj: Any) -> bytes:
    import msgpack

    return msgpack.packb(obj, default=_msgpack_default, use_bin_type=True)


def msgpack_loads(data: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(data, object_hook=_msgpack_hook, raw=False)


# ----------------------------------------------------------------------------- pickle (LeRobot)

PIECE_BYTES = 2 * 1024 * 1024  # LeRobot splits pickled payloads into 2 MB gRPC messages
TRANSFER_BEGIN, TRANSFER_MIDDLE, TRANSFER_END = 1, 2, 3


def pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj)


def pickle_loads(data: bytes) -> Any:
    # Only ever fed bytes this benchmark's own client produced on loopback; the protocol's
    # weakness (arbitrary code on unpickling) is one reason it is in the comparison.
    return pickle.loads(data)  # noqa: S301


def pieces(payload: bytes, size: int = PIECE_BYTES) -> list[bytes]:
    """Payload -> messages, each a 1-byte transfer state + up to ``size`` bytes."""
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    out = []
    for i, c in enumerate(chunks):
        state = TRANSFER_BEGIN if i == 0 else TRANSFER_MIDDLE
        if i == len(chunks) - 1:
            state = TRANSFER_END
        out.append(bytes([state]) + c)
    return out


def join_pieces(messages: list[bytes]) -> bytes:
    return b"".join(m[1:] for m in messages)
