"""Camera frames: decode (raw RGB8 / JPEG / PNG), resize with a named filter, normalise.

One implementation for every side: the service preprocesses with it and the agent resizes its
frames with it, so both compute the same pixels for a bundle's contract (pillow's filters are
the ones torchvision applies to PIL images during training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xvla.core.errors import InputError
from xvla.core.limits import check_image_header

MAX_IMAGE_SIDE = 8192

# "area" (opencv's INTER_AREA) is pillow's box filter: the mean over each output pixel's footprint.
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "area": 4, "hamming": 5}


@dataclass
class CameraInput:
    """One decoded camera frame: HxWx3 uint8 RGB, optional world-to-camera [4,4] and pixel intrinsics [3,3]."""

    image: np.ndarray
    extrinsics: np.ndarray | None = None
    intrinsics: np.ndarray | None = None


def decode_image(encoding: str, data: bytes, height: int = 0, width: int = 0, field: str = "image") -> np.ndarray:
    """-> HxWx3 uint8 RGB. ``encoding`` is raw_rgb8 | jpeg | png."""
    if encoding == "raw_rgb8":
        if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
            raise InputError(f"{field}.height/width", f"raw RGB8 needs 0 < height, width <= {MAX_IMAGE_SIDE}, got {height}x{width}")
        if len(data) != height * width * 3:
            raise InputError(f"{field}.data", f"raw RGB8 {height}x{width} needs {height * width * 3} bytes, got {len(data)}")
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    if encoding in ("jpeg", "png"):
        import cv2

        check_image_header(data, encoding, field)  # declared size within the caps BEFORE decoding (bombs)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None:
            raise InputError(f"{field}.data", f"could not decode {len(data)} bytes as {encoding.upper()}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise InputError(f"{field}.encoding", f"unsupported image encoding {encoding!r} (raw_rgb8, jpeg, png)")


def resize_image(img: np.ndarray, size_hw: tuple[int, int], filter_name: str = "bicubic") -> np.ndarray:
    """HxWx3 uint8 -> size_hw x 3 uint8 with a pillow filter (antialiased when shrinking, like training)."""
    from PIL import Image

    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    try:
        resample = Image.Resampling(PIL_FILTERS[filter_name.lower()])
    except KeyError:
        raise ValueError(f"preprocess.resize_filter {filter_name!r} unknown; choose from {sorted(PIL_FILTERS)}") from None
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), resample=resample))


def normalize_image(img: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, (x/255 - mean) / std."""
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))
