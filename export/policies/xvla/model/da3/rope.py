"""2-D rotary position embedding of DA3's ViT (`RotaryPositionEmbedding2D`).

Why rewritten: upstream caches frequency tables in a Python dict keyed by `int(positions.max())`,
a data-dependent read that breaks tracing. Here the positions follow from the patch grid alone, so
the cos/sin tables are a pure function of static shapes, built with NumPy (float32 arithmetic like
upstream) and enter a traced graph as constants.

Layout: head_dim is split in halves; the first half is rotated by the row index y, the second by
the column index x. Inside each half (d = head_dim / 2) the angles are `p * base^-(2k/d)`,
duplicated as `cat(a, a)`, and rotate-half is `cat(-x2, x1)` (not interleaved).
"""

from __future__ import annotations

import numpy as np
import torch


def grid_positions(rows: int, cols: int, *, collapse_patches: bool) -> np.ndarray:
    """(y, x) of one view's tokens [1 + rows*cols, 2]: token 0 at (0, 0), patches row-major.

    Local blocks give patch (r, c) the position (r+1, c+1). Global (cross-view) blocks give every
    patch (1, 1) (`pos_nodiff`), so global attention carries no intra-view spatial signal.
    """
    if collapse_patches:
        patches = np.ones((rows * cols, 2), dtype=np.int64)
    else:
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        patches = np.stack((ys.reshape(-1), xs.reshape(-1)), axis=-1) + 1
    return np.concatenate((np.zeros((1, 2), dtype=np.int64), patches), axis=0)


def _axis_tables(positions: np.ndarray, dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [N, dim] of integer `positions` [N] for one axis (float32 throughout, as upstream)."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = np.float32(1.0) / (np.float32(base) ** exponents)
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate((angles, angles), axis=-1)
    return np.cos(angles), np.sin(angles)


def rope_tables(
    positions: np.ndarray, head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-head cos/sin tables [N, head_dim] for (y, x) `positions` [N, 2]."""
    half = head_dim // 2
    cos_y, sin_y = _axis_tables(positions[:, 0], half, base)
    cos_x, sin_x = _axis_tables(positions[:, 1], half, base)
    cos = torch.from_numpy(np.concatenate((cos_y, cos_x), axis=-1).astype(np.float32))
    sin = torch.from_numpy(np.concatenate((sin_y, sin_x), axis=-1).astype(np.float32))
    return cos.to(dtype), sin.to(dtype)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `t` [..., N, head_dim] by tables [N, head_dim]; the y and x halves rotate separately.

    Per half h = [h1, h2] the rotation partner is [-h2, h1]; with q = head_dim / 4 this is a swap
    of the two q-blocks inside each half.
    """
    q = t.shape[-1] // 4
    parts = t.unflatten(-1, (2, 2, q))  # [..., axis, block, q]
    rotated = torch.cat((-parts[..., 1:, :], parts[..., :1, :]), dim=-2).flatten(-3)
    return t * cos + rotated * sin
