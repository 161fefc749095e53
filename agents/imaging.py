"""Robot-side image resizing in plain numpy (the robot install has no pillow or opencv).

Frames are shrunk to the model's input size (from ``Describe.cameras``) *before* they
leave the robot: a 720x720 head frame is 1.5 MB raw, 150 kB at 224x224. The filter is
an anti-aliased downscale: an integer box filter (area average) down to the smallest
size that is still >= the target, then bilinear (half-pixel centres) for the rest.
That is close to pillow's/opencv's area resampling and costs a few ms per frame.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from xvla.core.limits import check_image_size


def check_image(image: np.ndarray, field: str = "image") -> np.ndarray:
    """Accept HxWx3 RGB or HxWx4 RGBA (BEHAVIOR's cameras); return it as uint8 without dropping alpha.

    Alpha is dropped later, on the small resized frame: a strided copy of a 720x720x4
    frame costs tens of ms in numpy, the same copy at 224x224 almost nothing.
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{field}: expected an HxWx3 (RGB) or HxWx4 (RGBA) image, got shape {list(a.shape)}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{field}: empty image of shape {list(a.shape)}")
    check_image_size(a.shape[0], a.shape[1], field)  # an InputError (a ValueError) past the caps
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            # float images in [0, 1] (some simulators) -> uint8
            a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.integer):
            a = np.clip(a, 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"{field}: unsupported image dtype {a.dtype}")
    return a


def as_rgb8(image: np.ndarray, field: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB, contiguous (drops alpha).

    RGBA -> RGB with pillow when it is installed (a SIMD byte shuffle: ~0.6 ms for BEHAVIOR's
    720x720 head frame, against ~5 ms for numpy's strided copy); numpy otherwise.
    """
    a = check_image(image, field)
    if a.shape[2] == 4:
        rgb = _rgba_to_rgb_pillow(a)
        return rgb if rgb is not None else np.ascontiguousarray(a[:, :, :3])
    return np.ascontiguousarray(a)


def _rgba_to_rgb_pillow(a: np.ndarray) -> np.ndarray | None:
    try:
        from PIL import Image
    except ImportError:  # the robot install may not have pillow
        return None
    a = np.ascontiguousarray(a)
    return np.asarray(Image.frombuffer("RGBA", (a.shape[1], a.shape[0]), a, "raw", "RGBA", 0, 1).convert("RGB"))


@lru_cache(maxsize=64)
def _taps(n: int, out_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices and weights for n -> out_len samples, half-pixel centres."""
    pos = (np.arange(out_len, dtype=np.float64) + 0.5) * (n / out_len) - 0.5
    pos = np.clip(pos, 0.0, n - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (pos - i0).astype(np.float32)


@lru_cache(maxsize=64)
def _column_taps(blocks: int, out_len: int, fx: int, c_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (row-major, channels last) indices of the box sums each output column blends.

    Only channels 0..2 are gathered, which is where RGBA loses its alpha for free.
    """
    j0, j1, w = _taps(blocks, out_len)
    ch = np.arange(3)
    idx0 = (c_in * fx * j0[:, None] + ch).reshape(-1)
    idx1 = (c_in * fx * j1[:, None] + ch).reshape(-1)
    return idx0, idx1, np.repeat(w, 3)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB(A) frame to ``height`` x ``width`` RGB uint8 (no-op when already that size).

    Works on rows flattened to ``W*3`` bytes so every step is a contiguous slice or a
    gather along the first axis, the operations numpy does fast:
    box sums over fy rows and fx columns (integer factors), then bilinear between box
    centres, then one scale and round.
    """
    if height < 1 or width < 1:
        raise ValueError(f"resize target must be positive, got {height}x{width}")
    img = check_image(image)
    h_in, w_in, c = img.shape
    if h_in == height and w_in == width:
        return as_rgb8(img)
    fy, fx = max(1, h_in // height), max(1, w_in // width)
    hb, wb = h_in // fy, w_in // fx  # size after the box filter
    oy, ox = (h_in - hb * fy) // 2, (w_in - wb * fx) // 2
    a = np.ascontiguousarray(img[oy : oy + hb * fy, ox : ox + wb * fx]).reshape(hb, fy, wb * fx * c)
    acc_t = np.uint16 if fy * fx <= 257 else np.uint32
    rows = a[:, 0].astype(acc_t)  # [hb, wb*fx*c]: sums over fy rows
    for k in range(1, fy):
        rows += a[:, k]
    span = wb * fx * c - c * (fx - 1)
    box = rows[:, :span].copy() if fx > 1 else rows  # box[:, c*fx*j + ch] = sum over fx columns
    for k in range(1, fx):
        box += rows[:, c * k : c * k + span]
    idx0, idx1, wx = _column_taps(wb, width, fx, c)
    b0 = box[:, idx0].astype(np.float32)
    cols = b0 + (box[:, idx1].astype(np.float32) - b0) * wx  # [hb, width*c]
    i0, i1, wy = _taps(hb, height)
    r0 = cols[i0]
    out = r0 + (cols[i1] - r0) * wy[:, None]  # [height, width*c]
    out *= np.float32(1.0 / (fy * fx))
    out += np.float32(0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8).reshape(height, width, 3)


def scale_intrinsics(k: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics in pixel units follow the image: scale fx, cx by the width ratio and fy, cy by the height ratio."""
    k = np.array(k, dtype=np.float32).reshape(3, 3)
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    k[0, :] *= sx
    k[1, :] *= sy
    k[2, :] = (0.0, 0.0, 1.0)
    return k
