"""Caps on what one message may make us do, checked before the work (and the memory) is spent.

Every check here is O(header): an instruction's length before it is tokenised, a tensor's rank and
element count before anything is allocated, an encoded image's declared size read from its
JPEG/PNG header before it is decoded (a 631-byte JPEG can declare 16000x16000 = 768 MB of pixels).
Errors name the field and never echo the input; :func:`bounded` shortens any message that might.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

from xvla.core.errors import InputError


@dataclass(frozen=True)
class Limits:
    max_instruction_bytes: int = 4096  # UTF-8 bytes; the models read <= a few hundred tokens
    max_tensor_rank: int = 8  # our tensors are 1-3 d; numpy itself stops at 64
    max_tensor_elements: int = 1 << 20  # proprio is <= 256, a chunk T x D a few thousand
    max_image_side: int = 8192
    max_image_pixels: int = 4096 * 4096  # decoded H x W (4K UHD fits); x3 bytes once decoded
    max_error_chars: int = 512  # error details sent to a client
    max_name_chars: int = 128  # camera names, skills, routes, ids


DEFAULT = Limits()


def bounded(text: str, limit: int = DEFAULT.max_error_chars) -> str:
    """``text`` cut to ``limit`` characters (marked), so no error detail echoes a huge input."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 24)] + f"... [{len(text)} chars]"


def check_instruction(text: str, field: str, limits: Limits = DEFAULT) -> str:
    n = len(text)
    if n > limits.max_instruction_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_instruction_bytes:
        raise InputError(field, f"too long: {len(text.encode('utf-8', 'surrogatepass'))} bytes "
                                f"(limit {limits.max_instruction_bytes})")
    return text


def check_name(text: str, field: str, limits: Limits = DEFAULT) -> str:
    if len(text) > limits.max_name_chars:
        raise InputError(field, f"too long: {len(text)} characters (limit {limits.max_name_chars})")
    return text


def check_shape(shape: Sequence[int], field: str, limits: Limits = DEFAULT) -> tuple[int, ...]:
    """Rank, sign and element count of a declared shape, before any allocation. Returns it as ints."""
    if len(shape) > limits.max_tensor_rank:
        raise InputError(f"{field}.shape", f"rank {len(shape)} exceeds the limit {limits.max_tensor_rank}")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InputError(f"{field}.shape", f"negative dimension in {list(dims)}")
    n = math.prod(dims)  # python ints: no wraparound
    if n > limits.max_tensor_elements:
        raise InputError(f"{field}.shape", f"{n} elements exceed the limit {limits.max_tensor_elements}")
    return dims


# ------------------------------------------------------------------------------ image headers
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8"
# start-of-frame markers carry the size; C4 (DHT), C8 (JPG), CC (DAC) share the range but are not frames
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) declared by a PNG or JPEG header, None if no header can be found. O(markers)."""
    mv = memoryview(data)
    if len(mv) >= 24 and bytes(mv[:8]) == PNG_MAGIC and bytes(mv[12:16]) == b"IHDR":
        w, h = struct.unpack(">II", mv[16:24])
        return h, w
    if len(mv) < 4 or bytes(mv[:2]) != JPEG_MAGIC:
        return None
    i = 2
    while i + 4 <= len(mv):
        if mv[i] != 0xFF:
            return None
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers: no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (seg_len,) = struct.unpack(">H", mv[i + 2:i + 4])
        if seg_len < 2:
            return None
        if marker in _SOF:
            if i + 9 > len(mv):
                return None
            h, w = struct.unpack(">HH", mv[i + 5:i + 9])
            return h, w
        i += 2 + seg_len
    return None


def check_image_header(data: bytes, encoding: str, field: str, limits: Limits = DEFAULT) -> tuple[int, int]:
    """The declared (height, width) of an encoded image, within the caps; else InputError naming ``field``."""
    hw = image_header_size(data)
    if hw is None:
        raise InputError(f"{field}.data", f"no {encoding.upper()} size header found ({len(data)} bytes)")
    return check_image_size(hw[0], hw[1], field, limits)


def check_image_size(height: int, width: int, field: str, limits: Limits = DEFAULT) -> tuple[int, int]:
    if not (0 < height <= limits.max_image_side and 0 < width <= limits.max_image_side):
        raise InputError(field, f"{height}x{width}: each side must be in [1, {limits.max_image_side}]")
    if height * width > limits.max_image_pixels:
        raise InputError(field, f"{height}x{width} = {height * width} pixels exceed the limit {limits.max_image_pixels}")
    return height, width
