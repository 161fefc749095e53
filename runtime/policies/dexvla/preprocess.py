"""DexVLA preprocessing without torch or transformers: what the official processor path produces.

Official path (LeRobot ``Qwen2VLAProcess.single_forward_process(eval=True)`` + ``post_process`` for B > 1):
each camera view -> PIL -> ``qwen_vl_utils.fetch_image`` (``smart_resize`` to multiples of 28, PIL bicubic)
-> Qwen2-VL-Instruct chat template (system prompt, one ``<|vision_start|><|image_pad|><|vision_end|>`` per
view, then the task, then ``<|im_start|>assistant\\n``) -> ``Qwen2VLProcessor`` (slow ``Qwen2VLImageProcessor``:
a second ``smart_resize`` with the processor's pixel bounds, rescale in float64 -> float32, CLIP mean/std,
the frame duplicated to ``temporal_patch_size``, patches flattened in merge-window order; each
``<|image_pad|>`` expanded to grid_h*grid_w/merge^2 tokens) -> the batch LEFT-padded with the pad id.

Here: the ``tokenizers`` library on the folder's ``tokenizer.json``, numpy and pillow. The M-RoPE position
ids and ``rope_deltas`` (transformers' ``get_rope_index`` semantics, images only) are computed in numpy for
the runtime's prefill.  One deliberate difference: the attention mask marks the real tokens of each sample
(the official ``post_process`` uses ``ids != pad``, which also masks a pad-id token inside a prompt).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

SYSTEM_PROMPT = "You are a helpful assistant."
REASONING_SUFFIX = " Next action:"
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class ImageConfig:
    """``preprocessor_config.json`` of the checkpoint (Qwen2-VL-2B-Instruct values by default)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    # qwen_vl_utils.fetch_image bounds (applied first)
    fetch_min_pixels: int = 4 * 28 * 28
    fetch_max_pixels: int = 16384 * 28 * 28

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_file(cls, path: Path) -> "ImageConfig":
        raw = json.loads(Path(path).read_text())
        size = raw.get("size") or {}
        return cls(patch_size=int(raw.get("patch_size", 14)),
                   temporal_patch_size=int(raw.get("temporal_patch_size", 2)),
                   merge_size=int(raw.get("merge_size", 2)),
                   min_pixels=int(raw.get("min_pixels", size.get("shortest_edge", 56 * 56))),
                   max_pixels=int(raw.get("max_pixels", size.get("longest_edge", 28 * 28 * 16384))),
                   rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
                   image_mean=tuple(float(x) for x in raw.get("image_mean", cls.image_mean)),  # type: ignore[arg-type]
                   image_std=tuple(float(x) for x in raw.get("image_std", cls.image_std)))  # type: ignore[arg-type]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's size rule: multiples of ``factor``, pixel count within bounds, aspect ratio kept."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio must be at most {MAX_ASPECT_RATIO}, got {height}x{width}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _resize(img: Image.Image, h: int, w: int) -> Image.Image:
    return img if img.size == (w, h) else img.resize((w, h), resample=Image.Resampling.BICUBIC)


def image_patches(image: np.ndarray, cfg: ImageConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(H, W, 3) uint8 -> (grid_t*grid_h*grid_w, C*T*p*p) float32 patches and the (t, h, w) grid."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    img = Image.fromarray(image).convert("RGB")
    h, w = smart_resize(img.height, img.width, cfg.factor, cfg.fetch_min_pixels, cfg.fetch_max_pixels)
    img = _resize(img, h, w)  # qwen_vl_utils.fetch_image
    h, w = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    img = _resize(img, h, w)  # Qwen2VLImageProcessor
    x = (np.asarray(img).astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    x = (x - np.asarray(cfg.image_mean, dtype=np.float32)) / np.asarray(cfg.image_std, dtype=np.float32)
    x = x.transpose(2, 0, 1)[None]  # (1, C, H, W)
    t, m, p = cfg.temporal_patch_size, cfg.merge_size, cfg.patch_size
    x = np.tile(x, (t, 1, 1, 1))  # a still image: the frame repeated over the temporal patch
    grid_t, grid_h, grid_w = x.shape[0] // t, h // p, w // p
    c = x.shape[1]
    x = x.reshape(grid_t, t, c, grid_h // m, m, p, grid_w // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, T, p, p): merge-window order
    return np.ascontiguousarray(x.reshape(grid_t * grid_h * grid_w, c * t * p * p)), (grid_t, grid_h, grid_w)


def render_prompt(n_views: int, task: str) -> str:
    """The Qwen2-VL-Instruct chat template's output for one user turn of ``n_views`` images + the task."""
    vision = "<|vision_start|><|image_pad|><|vision_end|>" * n_views
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{vision}{task}<|im_end|>\n"
            "<|im_start|>assistant\n")


@dataclass
class SamplePrompt:
    input_ids: np.ndarray  # (L,) int64
    pixel_values: np.ndarray  # (patches, C*T*p*p) float32
    image_grid_thw: np.ndarray  # (views, 3) int64


@dataclass
class PromptBatch:
    input_ids: np.ndarray  # (B, L) int64, left-padded
    attention_mask: np.ndarray  # (B, L) int64, 0 on left padding
    pixel_values: np.ndarray  # (sum patches, C*T*p*p) float32, samples in order
    image_grid_thw: np.ndarray  # (B*views, 3) int64
    position_ids: np.ndarray  # (3, B, L) int64, M-RoPE (t, h, w) streams
    rope_deltas: np.ndarray  # (B, 1) int64: decode position = cache length + delta


@dataclass(frozen=True)
class TokenLayout:
    image_pad: int
    vision_start: int
    vision_end: int
    pad: int
    eos: int


def mrope_position_ids(input_ids: np.ndarray, attention_mask: np.ndarray, image_grid_thw: np.ndarray,
                       image_token_id: int, vision_start_id: int, merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, B, L) M-RoPE positions and (B, 1) rope_deltas, images only.

    Per sample, over its unpadded tokens: text counts up on all three streams; an image block of the
    merged grid (t, h/m, w/m) gets base + (t_idx, h_idx, w_idx), base = the position its first token would
    have as text; text after it resumes at max + 1. Left-pad positions are 1; delta = max + 1 - L.
    """
    b, seq = input_ids.shape
    pos = np.ones((3, b, seq), dtype=np.int64)
    deltas = np.zeros((b, 1), dtype=np.int64)
    image = 0
    for i in range(b):
        valid = attention_mask[i] == 1
        ids = input_ids[i][valid]
        chunks: list[np.ndarray] = []
        nxt, st = 0, 0  # next text position, index into ids
        starts = np.flatnonzero(ids == vision_start_id)
        n_images = int(np.sum(ids[starts[starts + 1 < len(ids)] + 1] == image_token_id))
        for _ in range(n_images):
            ed = int(np.flatnonzero(ids[st:] == image_token_id)[0]) + st
            t, h, w = (int(v) for v in image_grid_thw[image])
            image += 1
            gh, gw = h // merge_size, w // merge_size
            text = np.arange(ed - st) + nxt
            chunks.append(np.broadcast_to(text, (3, len(text))))
            base = nxt + (ed - st)
            ti, hi, wi = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
            block = np.stack([ti.ravel(), hi.ravel(), wi.ravel()]) + base
            chunks.append(block)
            nxt = int(block.max()) + 1
            st = ed + t * gh * gw
        if st < len(ids):
            text = np.arange(len(ids) - st) + nxt
            chunks.append(np.broadcast_to(text, (3, len(text))))
        sample = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), dtype=np.int64)
        pos[:, i, valid] = sample
        deltas[i, 0] = (int(sample.max()) + 1 if sample.size else 0) - seq
    return pos, deltas


@dataclass
class DexVLAPreprocessor:
    tokenizer: Tokenizer
    images: ImageConfig
    tokens: TokenLayout
    merge_size: int = 2
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "DexVLAPreprocessor":
        """A checkpoint folder (``tokenizer.json``, ``tokenizer_config.json``, ``preprocessor_config.json``)."""
        folder = Path(folder)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing (DexVLA tokenizer files)")
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tcfg = json.loads((folder / "tokenizer_config.json").read_text())

        def tid(text: str) -> int:
            i = tok.token_to_id(text)
            if i is None:
                raise ValueError(f"{folder}: tokenizer has no {text!r} token")
            return i

        def special(key: str, default: str) -> str:
            v = tcfg.get(key) or default
            return v["content"] if isinstance(v, dict) else v

        layout = TokenLayout(image_pad=tid("<|image_pad|>"), vision_start=tid("<|vision_start|>"),
                             vision_end=tid("<|vision_end|>"), pad=tid(special("pad_token", "<|endoftext|>")),
                             eos=tid(special("eos_token", "<|im_end|>")))
        pre = folder / "preprocessor_config.json"
        images = ImageConfig.from_file(pre) if pre.is_file() else ImageConfig()
        return cls(tokenizer=tok, images=images, tokens=layout, merge_size=images.merge_size)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def sample(self, images: Sequence[np.ndarray], task: str) -> SamplePrompt:
        """Camera views (each (H, W, 3) uint8, in the model's camera order) + task -> one prompt."""
        if not images:
            raise ValueError("at least one camera image is required")
        patches, grids = zip(*(image_patches(np.asarray(im), self.images) for im in images))
        text = render_prompt(len(images), task)
        pad = "<|image_pad|>"
        parts = text.split(pad)
        merge = self.merge_size ** 2
        expanded = parts[0] + "".join(pad * (t * h * w // merge) + rest for (t, h, w), rest in zip(grids, parts[1:]))
        ids = np.asarray(self.encode_text(expanded), dtype=np.int64)
        return SamplePrompt(input_ids=ids, pixel_values=np.concatenate(patches, axis=0),
                            image_grid_thw=np.asarray(grids, dtype=np.int64))

    def batch(self, samples: Sequence[SamplePrompt]) -> PromptBatch:
        """Left-pad with the pad id and compute the M-RoPE prefill positions."""
        if not samples:
            raise ValueError("empty batch")
        seq = max(len(s.input_ids) for s in samples)
        ids = np.full((len(samples), seq), self.tokens.pad, dtype=np.int64)
        mask = np.zeros((len(samples), seq), dtype=np.int64)
        for i, s in enumerate(samples):
            ids[i, seq - len(s.input_ids):] = s.input_ids
            mask[i, seq - len(s.input_ids):] = 1
        grid = np.concatenate([s.image_grid_thw for s in samples], axis=0)
        pos, deltas = mrope_position_ids(ids, mask, grid, self.tokens.image_pad, self.tokens.vision_start,
                                         self.merge_size)
        return PromptBatch(input_ids=ids, attention_mask=mask,
                           pixel_values=np.concatenate([s.pixel_values for s in samples], axis=0),
                           image_grid_thw=grid, position_ids=pos, rope_deltas=deltas)

    def answer_ids(self, reasoning: str) -> list[int]:
        """Training target appended after the prompt: ``reasoning + " Next action:" + <|im_end|>``."""
        return self.encode_text(reasoning + REASONING_SUFFIX + "<|im_end|>")
