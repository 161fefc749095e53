"""Camera-pose preprocessing shared by export, the serving runtime and the agent. NumPy only, no torch.

Why here and numpy-only: the runtime prepares extrinsics/intrinsics for the geometry engine
without importing torch, and must do exactly what the PyTorch reference does. Keep this module
free of torch imports (a test checks it).

Conventions (DA3-XVLA, see docs/geometry.md):
- extrinsics: SE(3) 4x4 per view, `[B, V, 4, 4]`, passed to DA3 unchanged (DA3 inverts them);
- intrinsics: pixel-unit 3x3 per view, `[B, V, 3, 3]`, for the image size they were measured at;
- view order of the model: `[head, left_wrist, right_wrist]`; the BEHAVIOR-1K dataset stores
  `[left_wrist, right_wrist, head]`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MODEL_VIEW_ORDER: tuple[str, ...] = ("head", "left_wrist", "right_wrist")
DATASET_VIEW_ORDER: tuple[str, ...] = ("left_wrist", "right_wrist", "head")


def view_permutation(src_order: Sequence[str], dst_order: Sequence[str]) -> tuple[int, ...]:
    """Indices `p` with `dst[i] = src[p[i]]` (a gather). Names must match one to one."""
    src, dst = list(src_order), list(dst_order)
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ValueError(f"view orders are not permutations of each other: {src} vs {dst}")
    return tuple(src.index(name) for name in dst)


# dataset [left_wrist, right_wrist, head] -> model [head, left_wrist, right_wrist]: gather (2, 0, 1).
# (The inverse, "where does each dataset view go", is (1, 2, 0).)
DATASET_TO_MODEL: tuple[int, ...] = view_permutation(DATASET_VIEW_ORDER, MODEL_VIEW_ORDER)


def reorder_views(
    x: np.ndarray,
    src_order: Sequence[str] = DATASET_VIEW_ORDER,
    dst_order: Sequence[str] = MODEL_VIEW_ORDER,
    axis: int = 1,
) -> np.ndarray:
    """Reorder the view axis of `x` (images, extrinsics, intrinsics, masks alike) by view names."""
    x = np.asarray(x)
    perm = view_permutation(src_order, dst_order)
    if x.shape[axis] != len(perm):
        raise ValueError(f"axis {axis} has {x.shape[axis]} views, view order names {len(perm)}")
    return np.take(x, perm, axis=axis)


def scale_intrinsics(
    intrinsics: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> np.ndarray:
    """Rescale pixel intrinsics [..., 3, 3] from an image of `src_hw` to one resized to `dst_hw`.

    fx and cx scale with the width ratio, fy and cy with the height ratio (what
    `DA3InlineEncoder` does before a stretch-resize to the process resolution). float32, as upstream.
    """
    k = np.array(intrinsics, dtype=np.float32, copy=True)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [..., 3, 3], got {k.shape}")
    sy = np.float32(dst_hw[0] / float(src_hw[0]))
    sx = np.float32(dst_hw[1] / float(src_hw[1]))
    k[..., 0, 0] *= sx
    k[..., 0, 2] *= sx
    k[..., 1, 1] *= sy
    k[..., 1, 2] *= sy
    return k


def _where(idx: tuple[int, ...], view_names: Sequence[str] | None) -> str:
    """'batch 0, view 2 (right_wrist)' for an index into [..., V]."""
    if not idx:
        return "the matrix"
    parts = [f"batch {i}" for i in idx[:-1]]
    v = idx[-1]
    name = f" ({view_names[v]})" if view_names is not None and v < len(view_names) else ""
    parts.append(f"view {v}{name}")
    return ", ".join(parts)


def validate_se3(
    extrinsics: np.ndarray,
    *,
    name: str = "extrinsics",
    view_names: Sequence[str] | None = MODEL_VIEW_ORDER,
    atol: float = 1e-3,
) -> np.ndarray:
    """Check rigid transforms [..., 4, 4]: finite, last row [0,0,0,1], R orthonormal with det +1.

    Returns the input as float32. Raises ValueError naming the field, batch and view of the first
    bad matrix (a non-rigid pose would silently corrupt the camera tokens otherwise).
    """
    e = np.asarray(extrinsics)
    if e.ndim < 2 or e.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape [..., 4, 4], got {list(e.shape)}")
    if not np.issubdtype(e.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {e.dtype}")
    e64 = e.astype(np.float64)
    lead = e.shape[:-2]
    finite = np.isfinite(e64).all(axis=(-2, -1))
    indices = list(np.ndindex(*lead)) if lead else [()]  # a single [4,4] matrix has no leading axes
    for idx in indices:
        if not finite[idx]:
            raise ValueError(f"{name}: {_where(tuple(idx), view_names)} contains NaN or Inf")
    bottom_err = np.abs(e64[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=-1)
    r = e64[..., :3, :3]
    ortho_err = np.abs(np.swapaxes(r, -1, -2) @ r - np.eye(3)).max(axis=(-2, -1))
    det = np.linalg.det(r) if r.size else np.zeros(lead)
    for idx in indices:
        where = _where(tuple(idx), view_names)
        if bottom_err[idx] > atol:
            raise ValueError(f"{name}: {where} is not homogeneous, last row {e64[idx][3].tolist()} != [0, 0, 0, 1]")
        if ortho_err[idx] > atol:
            raise ValueError(
                f"{name}: {where} is not rigid, rotation block is not orthonormal (max |R^T R - I| = {ortho_err[idx]:.3g})"
            )
        if det[idx] < 0:
            raise ValueError(f"{name}: {where} is a reflection (det R = {det[idx]:.3g}), not a rotation")
    return e.astype(np.float32)


def validate_intrinsics(
    intrinsics: np.ndarray,
    *,
    name: str = "intrinsics",
    view_names: Sequence[str] | None = MODEL_VIEW_ORDER,
) -> np.ndarray:
    """Check pixel intrinsics [..., 3, 3]: finite, fx > 0, fy > 0. Returns float32."""
    k = np.asarray(intrinsics)
    if k.ndim < 2 or k.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape [..., 3, 3], got {list(k.shape)}")
    k64 = k.astype(np.float64)
    lead = k.shape[:-2]
    for idx in np.ndindex(*lead) if lead else [()]:
        where = _where(tuple(idx), view_names)
        m = k64[idx]
        if not np.isfinite(m).all():
            raise ValueError(f"{name}: {where} contains NaN or Inf")
        if m[0, 0] <= 0 or m[1, 1] <= 0:
            raise ValueError(f"{name}: {where} has non-positive focal length (fx={m[0, 0]}, fy={m[1, 1]})")
    return k.astype(np.float32)


def check_pose(arr: np.ndarray | None, shape: tuple[int, ...], field: str) -> np.ndarray | None:
    """A client's camera pose: shape, finiteness and (for [4, 4]) rigidity, as an InputError naming ``field``."""
    from xvla.core.errors import InputError

    if arr is None:
        return None
    if tuple(arr.shape) != shape:
        raise InputError(f"{field}.shape", f"expected {list(shape)}, got {list(arr.shape)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(field, "contains NaN or Inf")
    if shape == (4, 4):  # a non-rigid pose would silently corrupt the camera tokens
        try:
            validate_se3(arr, name=field, view_names=None)
        except ValueError as exc:
            raise InputError(field, str(exc).removeprefix(f"{field}: ")) from exc
    return arr.astype(np.float32)
