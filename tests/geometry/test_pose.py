"""NumPy pose helpers (core/pose.py): view reorder, intrinsics rescaling, SE(3) checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xvla.core import pose

POSE_FILE = Path(pose.__file__)


def _rigid(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random rigid transforms (rotation from a QR decomposition, det fixed to +1)."""
    out = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        out[i, :3, :3] = q
        out[i, :3, 3] = rng.normal(size=3)
    return out


def test_module_imports_no_torch():
    """The runtime reuses this file without torch: loading it alone must not import torch."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pose_alone', {str(POSE_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules, 'pose.py pulled in torch'\n"
        "print(m.DATASET_TO_MODEL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(2, 0, 1)"


def test_dataset_to_model_view_order_by_name():
    names = np.array(pose.DATASET_VIEW_ORDER)[None]  # [1, V] of view names
    assert pose.reorder_views(names).tolist() == [["head", "left_wrist", "right_wrist"]]
    imgs = np.stack([np.full((3, 2, 2), i, dtype=np.float32) for i in range(3)])[None]  # view i filled with i
    moved = pose.reorder_views(imgs)
    assert [int(moved[0, v, 0, 0, 0]) for v in range(3)] == [2, 0, 1]
    back = pose.reorder_views(moved, pose.MODEL_VIEW_ORDER, pose.DATASET_VIEW_ORDER)
    np.testing.assert_array_equal(back, imgs)


def test_reorder_rejects_mismatched_names_and_counts():
    with pytest.raises(ValueError, match="permutations"):
        pose.view_permutation(["a", "b"], ["a", "c"])
    with pytest.raises(ValueError, match="views"):
        pose.reorder_views(np.zeros((1, 2, 4, 4)))


def test_scale_intrinsics_224_to_504():
    k = np.array([[95.2, 0.5, 112.0], [0.0, 95.2, 112.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    out = pose.scale_intrinsics(k[None, None], (224, 224), (504, 504))[0, 0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[[0, 0, 1, 1], [0, 2, 1, 2]], np.array([95.2, 112, 95.2, 112]) * 2.25, rtol=1e-6)
    assert out[0, 1] == k[0, 1] and out[2].tolist() == [0, 0, 1]  # skew and last row untouched
    # non-square: width ratio to fx/cx, height ratio to fy/cy
    rect = pose.scale_intrinsics(k, (224, 448), (112, 112))
    np.testing.assert_allclose([rect[0, 0], rect[0, 2], rect[1, 1], rect[1, 2]], [95.2 / 4, 28, 95.2 / 2, 56], rtol=1e-6)
    np.testing.assert_array_equal(pose.scale_intrinsics(k, (224, 224), (224, 224)), k)


def test_validate_se3_accepts_rigid():
    e = _rigid(np.random.default_rng(0), 6).reshape(2, 3, 4, 4)
    out = pose.validate_se3(e)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda m: m.__setitem__((0, 0), np.nan), "NaN or Inf"),
        (lambda m: m.__setitem__((1, 3), np.inf), "NaN or Inf"),
        (lambda m: m.__setitem__((slice(0, 3), slice(0, 3)), m[:3, :3] * 1.5), "not rigid"),
        (lambda m: m.__setitem__((3, 0), 0.2), "not homogeneous"),
        (lambda m: m.__setitem__((slice(0, 3), 0), -m[:3, 0]), "reflection"),
    ],
)
def test_validate_se3_names_the_bad_view(corrupt, message):
    e = _rigid(np.random.default_rng(1), 6).reshape(2, 3, 4, 4)
    corrupt(e[1, 2])
    with pytest.raises(ValueError, match=message) as err:
        pose.validate_se3(e)
    assert "extrinsics: batch 1, view 2 (right_wrist)" in str(err.value)


def test_validate_se3_single_matrix():
    """One camera's [4,4] pose (what the runtime checks per camera) has no batch or view axes."""
    e = _rigid(np.random.default_rng(2), 1)[0]
    assert pose.validate_se3(e, view_names=None).shape == (4, 4)
    e[0, 0] = np.nan
    with pytest.raises(ValueError, match="extrinsics: the matrix contains NaN or Inf"):
        pose.validate_se3(e, view_names=None)


def test_validate_se3_shape_and_intrinsics():
    with pytest.raises(ValueError, match=r"extrinsics must have shape \[..., 4, 4\]"):
        pose.validate_se3(np.zeros((1, 3, 3, 4)))
    k = np.tile(np.array([[100.0, 0, 112], [0, 100, 112], [0, 0, 1]]), (1, 3, 1, 1))
    assert pose.validate_intrinsics(k).dtype == np.float32
    k[0, 1, 1, 1] = 0.0
    with pytest.raises(ValueError, match="intrinsics: batch 0, view 1 \\(left_wrist\\) has non-positive focal"):
        pose.validate_intrinsics(k)
