"""The array encodings of openpi, BEHAVIOR-1K, GR00T and json_numpy, and what garbage turns into."""

from __future__ import annotations

import base64
import io
import json

import msgpack
import numpy as np
import pytest

from xvla.agents.bridges.codecs import (
    ArrayStyle,
    WireError,
    json_numpy_dumps,
    json_numpy_value,
    packb,
    unpackb,
    uses_style,
)


def test_openpi_style_round_trip_matches_openpi_layout():
    obs = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int64(5), "t": "text", "n": {"x": np.zeros(2, np.uint8)}}
    raw = packb(obs)
    # openpi_client.msgpack_numpy packs exactly these byte-string markers
    doc = msgpack.unpackb(raw, strict_map_key=False)
    assert doc["a"][b"__ndarray__"] is True and doc["a"][b"dtype"] == "<f4" and doc["a"][b"shape"] == [2, 3]
    back = unpackb(raw)
    np.testing.assert_array_equal(back["a"], obs["a"])
    assert back["s"] == 5 and isinstance(back["s"], np.int64) and back["t"] == "text"
    assert uses_style(raw, ArrayStyle.OPENPI) and not uses_style(raw, ArrayStyle.GR00T)


def test_gr00t_and_behavior_torch_styles_decode():
    raw = packb({"x": np.eye(3, dtype=np.float64)}, ArrayStyle.GR00T)
    assert uses_style(raw, ArrayStyle.GR00T)
    np.testing.assert_array_equal(unpackb(raw)["x"], np.eye(3))
    t = {b"__torch__": True, b"data": np.ones(4, np.float32).tobytes(), b"dtype": "float32", b"shape": [4]}
    np.testing.assert_array_equal(unpackb(msgpack.packb({"a": t}))["a"], np.ones(4, np.float32))


@pytest.mark.parametrize("payload,match", [
    (b"\xc1\xc1\xc1", "not a valid msgpack"),
    ("text", "binary msgpack"),
    (msgpack.packb({"a": {b"__ndarray__": True, b"data": b"1234", b"dtype": "<f4", b"shape": [2]}}), "needs 8 bytes, got 4"),
    (msgpack.packb({"a": {b"__ndarray__": True, b"data": b"12345678", b"dtype": "|O", b"shape": [1]}}), "not accepted"),
    (msgpack.packb({"a": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": "x"}}), "shape"),
    (msgpack.packb({"a": {b"__ndarray__": True, b"data": b"", b"dtype": "bogus", b"shape": [0]}}), "unknown array dtype"),
    (msgpack.packb({"a": {"__ndarray_class__": True, "as_npy": b"garbage"}}), "not a valid .npy"),
])
def test_garbage_is_an_error_message_not_a_crash(payload, match):
    with pytest.raises(WireError, match=match):
        unpackb(payload)


def test_pickled_npy_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WireError):
        unpackb(msgpack.packb({"a": {"__ndarray_class__": True, "as_npy": buf.getvalue()}}))


def test_size_limit():
    with pytest.raises(WireError, match="exceeds the limit of 10 bytes"):
        unpackb(packb({"a": np.zeros(100, np.uint8)}), max_bytes=10)


def test_json_numpy_values():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    s = json_numpy_dumps(img)
    assert json.loads(s)["dtype"] == "|u1"
    np.testing.assert_array_equal(json_numpy_value(s, "image0"), img)
    np.testing.assert_array_equal(json_numpy_value(json.loads(s), "image0"), img)  # a client that posted the map itself
    assert json_numpy_value([1, 2], "proprio") == [1, 2]
    bad = json.dumps({"__numpy__": base64.b64encode(b"123").decode(), "dtype": "<f4", "shape": [1]})
    with pytest.raises(WireError, match="image1: array of shape"):
        json_numpy_value(bad, "image1")
    with pytest.raises(WireError, match="proprio: not a json_numpy value"):
        json_numpy_value("{nope", "proprio")
