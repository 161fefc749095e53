"""Preprocessing by the bundle contract: tokenizer parity with transformers, images, intrinsics, R1Pro proprio."""

from __future__ import annotations

import numpy as np
import pytest

from xvla.core.embodiments.r1pro import r1pro_state_from_proprio
from xvla.core.errors import InputError
from xvla.core.images import CameraInput, decode_image, resize_image
from xvla.runtime.policies.base import ObservationInput, PolicySpec
from xvla.runtime.policies.xvla.preprocess import (
    ImagePreprocessor,
    InstructionTokenizer,
    ProprioPreprocessor,
    scale_intrinsics,
)
from xvla.runtime.wire import check_input, check_proprio

SPEC = {"image_size": [4, 6], "resize_filter": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "num_views": 3, "camera_names": ["head", "left_wrist", "right_wrist"]}


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    from xvla.export.policies.xvla.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=400)


@pytest.mark.parametrize("text", ["pick up the red cup and place it on the plate", "", "Turn ON the radio. Current: "
                                  "pick up radio from coffee table.", "ünïcödé 🤖 words " * 20])
def test_tokenizer_matches_transformers_bart(tiny_tokenizer_dir, text):
    from xvla.export.policies.xvla.tokenizer import load_tokenizer, tokenize

    ours = InstructionTokenizer(tiny_tokenizer_dir, max_len=50)(text)
    ref = tokenize(load_tokenizer(tiny_tokenizer_dir), text, max_len=50)[0]
    assert ours.dtype == np.int64 and ours.shape == (50,)
    np.testing.assert_array_equal(ours, ref)
    assert ours[0] == 0 and 2 in ours  # <s> ... </s>


def test_tokenizer_cache_returns_same_ids(tiny_tokenizer_dir):
    tok = InstructionTokenizer(tiny_tokenizer_dir, max_len=16)
    a = tok("open the drawer")
    assert tok("open the drawer") is a  # cached per instruction
    assert not a.flags.writeable


def test_decode_raw_png_jpeg_roundtrip():
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_image("raw_rgb8", img.tobytes(), 5, 7), img)
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok and np.array_equal(decode_image("png", png.tobytes()), img)  # RGB order restored
    with pytest.raises(InputError, match="cam.data"):
        decode_image("raw_rgb8", img.tobytes()[:-1], 5, 7, field="cam")
    with pytest.raises(InputError, match="cam.data"):
        decode_image("jpeg", b"\xff\xd8\xffgarbage", field="cam")


def test_resize_uses_pillow_filter():
    from PIL import Image

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((6, 4), Image.Resampling.BICUBIC))
    assert np.array_equal(resize_image(img, (4, 6), "bicubic"), ref)
    with pytest.raises(ValueError, match="resize_filter"):
        resize_image(img, (4, 6), "magic")


def test_images_view_order_mask_normalisation_and_intrinsics():
    pre = ImagePreprocessor(SPEC)
    white = np.full((8, 12, 3), 255, np.uint8)
    k = np.array([[10.0, 0, 6.0], [0, 20.0, 4.0], [0, 0, 1]], np.float32)
    out = pre({"right_wrist": CameraInput(white, intrinsics=k), "head": CameraInput(np.zeros((4, 6, 3), np.uint8))})
    assert out.image_input.shape == (3, 3, 4, 6)
    assert out.image_mask.tolist() == [True, False, True]  # model view order, absent wrist masked
    assert np.allclose(out.image_input[0], (0 - 0.5) / 0.25)  # black head
    assert np.allclose(out.image_input[2], (1 - 0.5) / 0.25)  # white right wrist
    assert np.all(out.image_input[1] == 0)  # masked view is zeros
    # 8x12 -> 4x6: every pixel quantity halves
    assert out.intrinsics[2] == pytest.approx(np.array([[5, 0, 3], [0, 10, 2], [0, 0, 1]], np.float32))
    spec = PolicySpec(kind="t", name="t", action_dim=23, horizon=1, camera_names=tuple(SPEC["camera_names"]),
                      image_size=(4, 6), proprio_dims=(23,))
    with pytest.raises(InputError, match=r"observation.cameras\[tail\].name"):  # validated before preprocessing
        check_input(ObservationInput({"tail": CameraInput(white)}, np.zeros(23, np.float32)), spec)


def test_scale_intrinsics_per_axis():
    k = np.array([[306.0, 0, 360.0], [0, 306.0, 360.0], [0, 0, 1]], np.float32)  # R1Pro head at 720x720
    k224 = scale_intrinsics(k, (720, 720), (224, 224))
    assert k224[0, 0] == pytest.approx(306 * 224 / 720) and k224[1, 2] == pytest.approx(112.0)
    k2 = scale_intrinsics(k, (720, 360), (224, 224))
    assert k2[0, 0] == pytest.approx(306 * 224 / 360) and k2[1, 1] == pytest.approx(306 * 224 / 720)


def test_r1pro_256_to_23():
    raw = np.arange(256, dtype=np.float32)
    s = r1pro_state_from_proprio(raw)
    assert s.shape == (23,)
    assert s[0:3].tolist() == [253, 254, 255]  # base_qvel
    assert s[3:7].tolist() == [236, 237, 238, 239]  # trunk_qpos
    assert s[7:14].tolist() == list(range(158, 165))  # left arm
    assert s[14] == 193 + 194  # left gripper: finger sum
    assert s[15:22].tolist() == list(range(197, 204))  # right arm
    assert s[22] == 232 + 233  # right gripper
    b = r1pro_state_from_proprio(raw, "b1k_baseline")
    assert b[14:21].tolist() == list(range(197, 204)) and b[21] == 193 + 194 and b[22] == 232 + 233


def test_proprio_preprocessor_accepts_23_and_256():
    pre = ProprioPreprocessor({"dim": 23, "r1pro_raw_dim": 256}, 23)
    assert pre.accepted_dims == [23, 256]
    assert pre(np.ones(23, np.float64)).dtype == np.float32
    assert pre(np.arange(256, dtype=np.float32))[0] == 253
    with pytest.raises(InputError, match="observation.proprio.shape"):  # validated once, before preprocessing
        check_proprio(np.ones(20, np.float32), pre.accepted_dims, "observation.proprio")
    with pytest.raises(InputError, match="NaN"):
        check_proprio(np.full(23, np.nan, np.float32), pre.accepted_dims, "observation.proprio")


def test_camera_pose_must_be_rigid():
    """A non-rigid or reflected extrinsic is refused with the field named, not passed to the geometry graph."""
    from xvla.core.pose import check_pose

    field = "observation.cameras[head].extrinsics"
    assert check_pose(np.eye(4), (4, 4), field).dtype == np.float32
    for bad, why in ((np.diag([2.0, 1, 1, 1]), "not rigid"), (np.diag([-1.0, 1, 1, 1]), "reflection")):
        with pytest.raises(InputError, match=why) as err:
            check_pose(bad, (4, 4), field)
        assert err.value.field == field
