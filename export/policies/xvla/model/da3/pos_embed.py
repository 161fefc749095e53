"""Position-embedding resize of DA3's ViT, exactly as upstream, as two matrix products.

Upstream (`DinoVisionTransformer.interpolate_pos_encoding`) resizes the 37x37 table with
`F.interpolate(mode="bicubic", align_corners=False, antialias=False,
scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37))`. The +0.1 offset matters: with
`scale_factor` PyTorch samples at `(dst + 0.5) / scale - 0.5`, so the result differs from
`size=(rows, cols)` (by up to 0.78 on the conformance weights).

Why matrices: a separable bicubic resize is `Wy @ P @ Wx^T` with fixed weights. Building the
weights in Python from the static grid size keeps the exact upstream sampling (PyTorch's
`upsample_bicubic2d` rule: A = -0.75, indices clamped at the border) while exporting as plain
MatMuls; an ONNX/TensorRT `Resize` would recompute the scale from the output size and lose the
offset.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_A = -0.75  # PyTorch's cubic convolution coefficient


def _cubic_near(x: np.float32) -> np.float32:  # |x| <= 1
    a = np.float32(_A)
    return ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + np.float32(1)


def _cubic_far(x: np.float32) -> np.float32:  # 1 < |x| < 2
    a = np.float32(_A)
    return ((a * x - np.float32(5) * a) * x + np.float32(8) * a) * x - np.float32(4) * a


def bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None) -> torch.Tensor:
    """[out_size, in_size] weights of a 1-D bicubic resize (align_corners=False).

    `scale_factor` given -> source coordinate `(d + 0.5) / scale_factor - 0.5` (what
    `F.interpolate(scale_factor=...)` does); None -> `in_size / out_size` is used instead.
    The arithmetic is float32, as in PyTorch's CPU kernel, so the weights agree to the last bits.
    """
    step = np.float32(1.0 / scale_factor) if scale_factor is not None else np.float32(in_size / out_size)
    w = np.zeros((out_size, in_size), dtype=np.float32)
    for d in range(out_size):
        src = step * np.float32(d + 0.5) - np.float32(0.5)
        base = int(np.floor(src))
        t = np.float32(min(max(src - np.float32(base), np.float32(0)), np.float32(1)))
        one = np.float32(1)
        coeffs = (_cubic_far(t + one), _cubic_near(t), _cubic_near(one - t), _cubic_far(one - t + one))
        for k, c in enumerate(coeffs):
            idx = min(max(base - 1 + k, 0), in_size - 1)
            w[d, idx] += c
    return torch.from_numpy(w)


def output_size(in_size: int, scale_factor: float) -> int:
    """PyTorch's output size for a scale factor: floor(in * scale)."""
    return int(math.floor(in_size * scale_factor))


def resize_pos_embed(
    pos_embed: torch.Tensor, rows: int, cols: int, offset: float
) -> torch.Tensor:
    """Resize `pos_embed` [1, 1 + M*M, C] to a rows x cols patch grid; the CLS entry passes through.

    Same branch as upstream: a square grid of the stored size is returned unchanged.
    """
    n = pos_embed.shape[1] - 1
    m = int(math.isqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed has {n} patch entries, not a square grid")
    if rows * cols == n and rows == cols:
        return pos_embed
    dtype = pos_embed.dtype
    pe = pos_embed.float()
    cls_pe, grid = pe[:, :1], pe[0, 1:].reshape(m, m, -1)  # [1,1,C], [M, M, C]
    if offset:
        sy, sx = (rows + offset) / m, (cols + offset) / m
    else:
        sy, sx = None, None
    wy = bicubic_matrix(m, rows, sy).to(pe.device)  # [rows, M]
    wx = bicubic_matrix(m, cols, sx).to(pe.device)  # [cols, M]
    if offset and (output_size(m, sy) != rows or output_size(m, sx) != cols):
        raise ValueError(f"pos_embed resize: scale factors do not give a {rows}x{cols} grid")
    # out[r, c, :] = sum_ij wy[r, i] * grid[i, j, :] * wx[c, j]
    out = torch.einsum("ri,ijc->rjc", wy, grid)
    out = torch.einsum("cj,rjd->rcd", wx, out)
    return torch.cat((cls_pe, out.reshape(1, rows * cols, -1)), dim=1).to(dtype)
