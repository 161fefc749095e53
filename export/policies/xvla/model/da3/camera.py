"""Camera pose -> camera token (`CameraEnc`), and the pose encoding it consumes.

Pose encoding per view: `[t (3), quaternion xyzw (4), fov_h, fov_w]` of the camera-to-world
pose `c2w = affine_inverse(E)` where E is the world-to-camera extrinsic given to the network.
The quaternion follows pytorch3d's `matrix_to_quaternion`: four candidates, the one built from
the largest |component| wins, then w >= 0. Upstream picks the winner with a boolean mask; here it
is a `gather` on the argmax, which selects the same candidate bit for bit and exports.
"""

from __future__ import annotations

import torch
from torch import nn

from xvla.export.policies.xvla.model.da3.config import DA3Config
from xvla.export.policies.xvla.model.da3.layers import Block, Mlp


def affine_inverse(a: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms: [R^T | -R^T t], last row copied."""
    r, t, last = a[..., :3, :3], a[..., :3, 3:], a[..., 3:, :]
    rt = r.mT
    return torch.cat((torch.cat((rt, -rt @ t), dim=-1), last), dim=-2)


def rotation_to_quaternion_xyzw(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4], scalar last, w >= 0."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                (
                    1.0 + m00 + m11 + m22,
                    1.0 + m00 - m11 - m22,
                    1.0 - m00 + m11 - m22,
                    1.0 - m00 - m11 + m22,
                ),
                dim=-1,
            ),
            min=0.0,
        )
    )  # |r|, |i|, |j|, |k| (times 2)
    # candidate c: the quaternion (r, i, j, k) computed from component c, times 4*|q_c|
    by_rijk = torch.stack(
        (
            torch.stack((q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    )  # [..., 4 candidates, 4]
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = by_rijk / (2.0 * torch.maximum(q_abs, floor)[..., None])
    best = q_abs.argmax(dim=-1)  # first maximum, like upstream's one_hot(argmax)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    rijk = torch.gather(candidates, -2, index).squeeze(-2)
    xyzw = torch.cat((rijk[..., 1:], rijk[..., :1]), dim=-1)
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]
) -> torch.Tensor:
    """World-to-camera E [B,S,4,4] and pixel K [B,S,3,3] at `image_hw` -> [B,S,9], float32.

    H, W are the size of the image given to the network (after any resize), matching K.
    """
    c2w = affine_inverse(extrinsics.float())
    k = intrinsics.float()
    h, w = image_hw
    quat = rotation_to_quaternion_xyzw(c2w[..., :3, :3])
    fov_h = 2 * torch.atan((h / 2) / k[..., 1, 1])
    fov_w = 2 * torch.atan((w / 2) / k[..., 0, 0])
    return torch.cat((c2w[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]), dim=-1).float()


class CameraEncoder(nn.Module):
    """`cam_enc`: pose MLP (9 -> C/2 -> C), LayerNorm, 4 pre-LN blocks across the views, LayerNorm.

    The trunk has its own head count (16 by default, independent of the ViT), qkv bias, no QK-norm,
    no RoPE, LayerScale 0.01 and LayerNorm eps 1e-5.
    """

    def __init__(self, cfg: DA3Config) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.trunk = nn.Sequential(
            *(
                Block(
                    c,
                    cfg.cam_enc_num_heads,
                    mlp_ratio=cfg.cam_enc_mlp_ratio,
                    qkv_bias=True,
                    init_values=cfg.cam_enc_init_values,
                    ln_eps=1e-5,
                )
                for _ in range(cfg.cam_enc_trunk_depth)
            )
        )
        self.token_norm = nn.LayerNorm(c)
        self.trunk_norm = nn.LayerNorm(c)
        self.pose_branch = Mlp(cfg.cam_enc_dim_in, c // 2, c)

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        """Pose encoding [B, S, 9] -> camera tokens [B, S, C] (attention over the S views)."""
        x = self.token_norm(self.pose_branch(encoding))
        return self.trunk_norm(self.trunk(x))
