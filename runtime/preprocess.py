"""Raw robot inputs -> the tensors a bundle's graphs take, following the bundle's ``preprocess`` block.

Images: decode (raw RGB8 / JPEG / PNG), resize to the model size with the bundle's filter
(pillow: the filter implementations torchvision uses on PIL images during training),
scale to [0, 1], normalise, HWC -> CHW, put in the model's view order; absent cameras
become masked views. Intrinsics are rescaled to the resized image. Proprio: the bundle's
dim, or the raw 256-d R1Pro vector. Instructions: the bundle's own tokenizer files via
the ``tokenizers`` library (transformers is not on the serving path), cached.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xvla.export.model import pose  # numpy-only: shared with the PyTorch geometry path
from xvla.runtime.r1pro import R1PRO_RAW_DIM, r1pro_state_from_proprio


from xvla.core.errors import InputError  # noqa: E402,F401  (re-exported: the runtime's historical home)
from xvla.core.limits import check_image_header


# ------------------------------------------------------------------------------------ images
MAX_IMAGE_SIDE = 8192


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


# "area" (opencv's INTER_AREA) is pillow's box filter: the mean over each output pixel's footprint.
_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "area": 4, "hamming": 5}


def resize_image(img: np.ndarray, size_hw: tuple[int, int], filter_name: str = "bicubic") -> np.ndarray:
    """HxWx3 uint8 -> size_hw x 3 uint8 with a pillow filter (antialiased when shrinking, like training)."""
    from PIL import Image

    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    try:
        resample = Image.Resampling(_PIL_FILTERS[filter_name.lower()])
    except KeyError:
        raise ValueError(f"preprocess.resize_filter {filter_name!r} unknown; choose from {sorted(_PIL_FILTERS)}") from None
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), resample=resample))


def normalize_image(img: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, (x/255 - mean) / std."""
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def scale_intrinsics(k: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int], mode: str = "per_axis") -> np.ndarray:
    """Pixel intrinsics of an image resized from ``from_hw`` to ``to_hw`` (the geometry path's own helper).

    per_axis: fx, cx scale with the width, fy, cy with the height (a plain resize);
    uniform: both with the width factor (for pipelines that keep the aspect ratio).
    """
    if mode == "uniform":
        to_hw = (from_hw[0] * to_hw[1] / from_hw[1], to_hw[1])
    elif mode != "per_axis":
        raise ValueError(f"preprocess.geometry.intrinsics_scale {mode!r} unknown (per_axis, uniform)")
    return pose.scale_intrinsics(k, from_hw, to_hw)


@dataclass
class CameraInput:
    """One decoded camera frame: HxWx3 uint8 RGB, optional world-to-camera [4,4] and pixel intrinsics [3,3]."""

    image: np.ndarray
    extrinsics: np.ndarray | None = None
    intrinsics: np.ndarray | None = None


@dataclass
class PreparedImages:
    image_input: np.ndarray  # [V, 3, H, W] float32
    image_mask: np.ndarray  # [V] bool
    extrinsics: np.ndarray  # [V, 4, 4] float32 (identity where absent)
    intrinsics: np.ndarray  # [V, 3, 3] float32, at the model's image size


class ImagePreprocessor:
    """The bundle's image contract: camera names in model view order, size, filter, normalisation."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.size = (int(spec["image_size"][0]), int(spec["image_size"][1]))
        self.filter = str(spec.get("resize_filter", "bicubic"))
        self.mean = np.asarray(spec.get("mean", (0.485, 0.456, 0.406)), np.float32)
        self.std = np.asarray(spec.get("std", (0.229, 0.224, 0.225)), np.float32)
        self.camera_names = [str(c) for c in spec["camera_names"]]
        self.num_views = int(spec.get("num_views", len(self.camera_names)))
        if len(self.camera_names) != self.num_views:
            raise ValueError(f"preprocess.camera_names has {len(self.camera_names)} names for num_views={self.num_views}")
        geometry = spec.get("geometry") or {}
        self.intrinsics_scale = str(geometry.get("intrinsics_scale", "per_axis"))
        res = geometry.get("process_res")
        if res is not None and int(res) not in self.size:
            raise ValueError(f"preprocess.geometry.process_res {res} differs from image_size {list(self.size)}: "
                             "the runtime feeds the geometry graph the VLM's image tensor")

    def __call__(self, cameras: Mapping[str, CameraInput], field: str = "observation.cameras") -> PreparedImages:
        unknown = sorted(set(cameras) - set(self.camera_names))
        if unknown:
            raise InputError(f"{field}.name", f"unknown camera(s) {unknown}; this policy's cameras are {self.camera_names}")
        if not cameras:
            raise InputError(field, f"at least one camera is required (cameras: {self.camera_names})")
        v, (h, w) = self.num_views, self.size
        image_input = np.zeros((v, 3, h, w), np.float32)
        mask = np.zeros((v,), bool)
        ext = np.tile(np.eye(4, dtype=np.float32), (v, 1, 1))
        intr = np.tile(np.eye(3, dtype=np.float32), (v, 1, 1))
        for i, name in enumerate(self.camera_names):
            cam = cameras.get(name)
            if cam is None:
                continue
            img = cam.image
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise InputError(f"{field}[{name}].image", f"expected HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
            image_input[i] = normalize_image(resize_image(img, self.size, self.filter), self.mean, self.std)
            mask[i] = True
            if cam.extrinsics is not None:
                ext[i] = cam.extrinsics
            if cam.intrinsics is not None:
                intr[i] = scale_intrinsics(cam.intrinsics, img.shape[:2], self.size, self.intrinsics_scale)
        return PreparedImages(image_input, mask, ext, intr)


# ------------------------------------------------------------------------------------ proprio
class ProprioPreprocessor:
    """Accepts the bundle's proprio dim, or the raw 256-d R1Pro vector when the bundle says so."""

    def __init__(self, spec: Mapping[str, Any] | None, action_dim: int) -> None:
        spec = dict(spec or {})
        self.dim = int(spec.get("dim", action_dim))
        self.raw_dim = spec.get("r1pro_raw_dim")
        self.order = str(spec.get("r1pro_order", "action_aligned"))
        if self.raw_dim is not None and int(self.raw_dim) != R1PRO_RAW_DIM:
            raise ValueError(f"preprocess.proprio.r1pro_raw_dim {self.raw_dim} unsupported (only {R1PRO_RAW_DIM})")

    @property
    def accepted_dims(self) -> list[int]:
        return [self.dim] + ([R1PRO_RAW_DIM] if self.raw_dim else [])

    def __call__(self, proprio: np.ndarray, field: str = "observation.proprio") -> np.ndarray:
        p = np.asarray(proprio)
        if p.ndim != 1 or p.shape[0] not in self.accepted_dims:
            raise InputError(f"{field}.shape", f"expected one of {[[d] for d in self.accepted_dims]}, got {list(p.shape)}")
        if not np.issubdtype(p.dtype, np.floating):
            raise InputError(f"{field}.dtype", f"expected float32 or float64, got {p.dtype}")
        if not np.all(np.isfinite(p)):
            raise InputError(field, f"contains NaN or Inf at index {int(np.flatnonzero(~np.isfinite(p))[0])}")
        if p.shape[0] == self.dim:
            return p.astype(np.float32)
        return r1pro_state_from_proprio(p, self.order)


# ------------------------------------------------------------------------------------ text
class InstructionTokenizer:
    """The bundle's BART BPE tokenizer: ``<s> text </s>`` padded/truncated to ``max_text_len``.

    Uses tokenizer.json when the bundle ships one, else vocab.json + merges.txt with the
    byte-level pre-tokenizer and the RoBERTa/BART post-processor (what BartTokenizerFast builds).
    Results are cached: a session sends the same instruction at every tick.
    """

    def __init__(self, tokenizer_dir: str | Path, max_len: int = 50, pad_id: int | None = None, cache_size: int = 256) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

        d = Path(tokenizer_dir)
        if (d / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            tok = Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            bos, eos = _special(d, "bos_token", "<s>"), _special(d, "eos_token", "</s>")
            tok.post_processor = processors.RobertaProcessing(
                sep=(eos, tok.token_to_id(eos)), cls=(bos, tok.token_to_id(bos)), trim_offsets=True, add_prefix_space=False
            )
        else:
            raise FileNotFoundError(f"{d}: no tokenizer.json or vocab.json + merges.txt")
        pad_token = _special(d, "pad_token", "<pad>")
        self.pad_id = int(pad_id if pad_id is not None else (tok.token_to_id(pad_token) or 1))
        self.max_len = int(max_len)
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_len)
        self._tok = tok
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def __call__(self, text: str) -> np.ndarray:
        """-> [max_len] int64 ids."""
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        ids = self._tok.encode(text).ids[: self.max_len]
        out = np.full((self.max_len,), self.pad_id, np.int64)
        out[: len(ids)] = ids
        out.setflags(write=False)
        self._cache[text] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out


def _special(d: Path, key: str, default: str) -> str:
    """A special token's text from special_tokens_map.json / tokenizer_config.json (strings or AddedToken dicts)."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = d / name
        if p.is_file():
            v = json.loads(p.read_text()).get(key)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                return v
    return default


def finite_or_error(arr: np.ndarray, field: str) -> None:
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(field, "contains NaN or Inf")


def check_pose(arr: np.ndarray | None, shape: tuple[int, ...], field: str) -> np.ndarray | None:
    if arr is None:
        return None
    if tuple(arr.shape) != shape:
        raise InputError(f"{field}.shape", f"expected {list(shape)}, got {list(arr.shape)}")
    finite_or_error(arr, field)
    if shape == (4, 4):  # a non-rigid pose would silently corrupt the camera tokens
        try:
            pose.validate_se3(arr, name=field, view_names=None)
        except ValueError as exc:
            raise InputError(field, str(exc).removeprefix(f"{field}: ")) from exc
    return arr.astype(np.float32)
