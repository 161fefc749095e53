"""2-D rotary position embedding of DA3's ViT (`RotaryPositionEmbedding2D`).

Why rewritten: upstream caches frequency tables in a Python dict keyed by `int(positions.max())`,
a data-dependent read that breaks tracing. Here the positions follow from the patch grid alone, so
the cos/sin tables are a pure function of static shapes and trace to constants.

Layout: head_dim is split in halves; the first half is rotated by the row index y, the second by
the column index x. Inside each half (d = head_dim / 2) the angles are `p * base^-(2k/d)`,
duplicated as `cat(a, a)`, and rotate-half is `cat(-x2, x1)` (not interleaved).
"""

from __future__ import annotations

import torch


def _axis_tables(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of integer `positions` [N] for one axis, `dim` features -> two [N, dim] tables."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    inv_freq = 1.0 / (base**exponents)  # [dim/2]
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [N, dim/2]
    angles = torch.cat((angles, angles), dim=-1)  # [N, dim]
    return angles.cos(), angles.sin()


def grid_positions(rows: int, cols: int, *, collapse_patches: bool) -> torch.Tensor:
    """(y, x) of one view's tokens [1 + rows*cols, 2]: token 0 at (0, 0), patches row-major.

    Local blocks give patch (r, c) the position (r+1, c+1). Global (cross-view) blocks give every
    patch (1, 1) (`pos_nodiff`), so global attention carries no intra-view spatial signal.
    """
    if collapse_patches:
        patches = torch.ones(rows * cols, 2, dtype=torch.long)
    else:
        ys = torch.arange(rows).repeat_interleave(cols)
        xs = torch.arange(cols).repeat(rows)
        patches = torch.stack((ys, xs), dim=-1) + 1
    return torch.cat((torch.zeros(1, 2, dtype=torch.long), patches), dim=0)


def rope_tables(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-head cos/sin tables [N, head_dim] for (y, x) `positions` [N, 2]."""
    half = head_dim // 2
    cos_y, sin_y = _axis_tables(positions[:, 0], half, base)
    cos_x, sin_x = _axis_tables(positions[:, 1], half, base)
    return torch.cat((cos_y, cos_x), dim=-1).to(dtype), torch.cat((sin_y, sin_x), dim=-1).to(dtype)


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    h = t.shape[-1] // 2
    return torch.cat((-t[..., h:], t[..., :h]), dim=-1)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `t` [..., N, head_dim] by tables [N, head_dim]; each half rotates on its own."""
    half = t.shape[-1] // 2
    ty, tx = t[..., :half], t[..., half:]
    ry = ty * cos[:, :half] + _rotate_half(ty) * sin[:, :half]
    rx = tx * cos[:, half:] + _rotate_half(tx) * sin[:, half:]
    return torch.cat((ry, rx), dim=-1)
