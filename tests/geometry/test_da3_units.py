"""DA3 pieces on their own: quaternion rewrite, pos-embed resize, RoPE, configs, unposed mode, resize path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xvla.export.policies.xvla.model.da3 import DA3Config, DA3Net, resolve_feature_layer, rotation_to_quaternion_xyzw
from xvla.export.policies.xvla.model.da3.camera import pose_encoding
from xvla.export.policies.xvla.model.da3.pos_embed import resize_pos_embed
from xvla.export.policies.xvla.model.da3.rope import apply_rope, grid_positions, rope_tables
from xvla.export.policies.xvla.model.geometry import DA3InlineEncoder, GeometryConfig


# ----------------------------------------------------------------------------- quaternion
def _reference_quaternion(m: torch.Tensor) -> torch.Tensor:
    """pytorch3d-style oracle with the boolean-mask selection upstream uses."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(m.reshape(*m.shape[:-2], 9), -1)
    q_abs = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    q_abs = torch.where(q_abs > 0, q_abs.clamp(min=0).sqrt(), torch.zeros_like(q_abs))
    cands = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ], -2) / (2.0 * q_abs[..., None].max(torch.tensor(0.1)))
    out = cands[F.one_hot(q_abs.argmax(-1), 4) > 0.5, :].reshape(*m.shape[:-2], 4)[..., [1, 2, 3, 0]]
    return torch.where(out[..., 3:4] < 0, -out, out)


def _axis_angle(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    axis = axis / axis.norm(dim=-1, keepdim=True)
    k = torch.zeros(*axis.shape[:-1], 3, 3, dtype=axis.dtype)
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -axis[..., 2], axis[..., 1], -axis[..., 0]
    k = k - k.mT
    eye = torch.eye(3, dtype=axis.dtype).expand_as(k)
    s, c = angle.sin()[..., None, None], angle.cos()[..., None, None]
    return eye + s * k + (1 - c) * (k @ k)


def _quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def test_quaternion_rewrite_is_bit_identical_and_correct():
    g = torch.Generator().manual_seed(0)
    axes = torch.randn(400, 3, generator=g)
    # all four winning candidates occur: small angles (w), and angles near pi about x, y, z axes
    angles = torch.cat([torch.rand(100, generator=g) * 0.5, math.pi - torch.rand(300, generator=g) * 0.3])
    axes[100:200, 0] += 10
    axes[200:300, 1] += 10
    axes[300:, 2] += 10
    r = _axis_angle(axes, angles)
    ours = rotation_to_quaternion_xyzw(r)
    assert torch.equal(ours, _reference_quaternion(r))
    assert (ours[..., 3] >= 0).all()
    torch.testing.assert_close(_quat_to_matrix(ours), r, atol=1e-5, rtol=0)
    winners = torch.stack([1 + r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2], 1 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2],
                           1 - r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2], 1 - r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2]], -1).argmax(-1)
    assert set(winners.tolist()) == {0, 1, 2, 3}


def test_pose_encoding_fov_and_translation():
    e = torch.eye(4).repeat(1, 2, 1, 1)
    e[0, 1, :3, 3] = torch.tensor([1.0, -2.0, 3.0])  # world-to-camera translation
    k = torch.tensor([[100.0, 0, 112], [0, 50.0, 112], [0, 0, 1]]).repeat(1, 2, 1, 1)
    enc = pose_encoding(e, k, (224, 224))
    torch.testing.assert_close(enc[0, 1, :3], torch.tensor([-1.0, 2.0, -3.0]))  # camera centre = -R^T t
    torch.testing.assert_close(enc[0, 0, 3:7], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(enc[0, 0, 7], torch.tensor(2 * math.atan(112 / 50)))  # fov_h uses fy
    torch.testing.assert_close(enc[0, 0, 8], torch.tensor(2 * math.atan(112 / 100)))  # fov_w uses fx


# ----------------------------------------------------------------------------- position embedding
@pytest.mark.parametrize("rows, cols", [(16, 16), (36, 36), (16, 24)])
def test_pos_embed_resize_matches_bicubic_scale_factor(rows: int, cols: int):
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 37 * 37, 8) * 0.5
    ours = resize_pos_embed(pe, rows, cols, 0.1)
    grid = pe[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    kw = dict(mode="bicubic", align_corners=False, antialias=False)
    ref = F.interpolate(grid, scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37), **kw)
    ref = torch.cat([pe[:, :1], ref.permute(0, 2, 3, 1).reshape(1, rows * cols, 8)], 1)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)  # float32 noise of the bicubic kernel
    by_size = F.interpolate(grid, size=(rows, cols), **kw).permute(0, 2, 3, 1).reshape(1, rows * cols, 8)
    assert (ours[:, 1:] - by_size).abs().max() > 1e-2  # the +0.1 offset matters
    assert torch.equal(ours[:, 0], pe[:, 0])


def test_pos_embed_native_grid_is_untouched():
    pe = torch.randn(1, 1 + 37 * 37, 4)
    assert resize_pos_embed(pe, 37, 37, 0.1) is pe


# ----------------------------------------------------------------------------- RoPE
def test_rope_matches_per_half_formula():
    torch.manual_seed(0)
    hd, rows, cols = 16, 3, 4
    pos = grid_positions(rows, cols, collapse_patches=False)
    cos, sin = rope_tables(pos, hd, 100.0)
    t = torch.randn(2, 4, 1 + rows * cols, hd)
    d = hd // 2
    inv = 1.0 / (100.0 ** (torch.arange(0, d, 2).float() / d))

    def one_axis(x, p):
        a = p.float()[:, None] * inv[None]
        a = torch.cat([a, a], -1)
        rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * a.cos() + rot * a.sin()

    p = torch.from_numpy(pos)
    ref = torch.cat([one_axis(t[..., :d], p[:, 0]), one_axis(t[..., d:], p[:, 1])], -1)
    torch.testing.assert_close(apply_rope(t, cos, sin), ref, atol=1e-6, rtol=0)
    assert pos[0].tolist() == [0, 0] and pos[1].tolist() == [1, 1] and pos[-1].tolist() == [rows, cols]
    glob = grid_positions(rows, cols, collapse_patches=True)
    assert glob[0].tolist() == [0, 0] and (glob[1:] == 1).all()


# ----------------------------------------------------------------------------- configs
def _yaml_graph(name: str, out_layers, start: int, dim: int, with_cam: bool = True) -> dict:
    g = {"__object__": {"path": "depth_anything_3.model.da3", "name": "DepthAnything3Net", "args": "as_params"},
         "net": {"name": name, "out_layers": out_layers, "alt_start": start, "qknorm_start": start,
                 "rope_start": start, "cat_token": with_cam},
         "head": {"dim_in": 2 * dim, "output_dim": 2, "features": 256, "out_channels": [256, 512, 1024, 1024]}}
    if with_cam:
        g["cam_enc"] = {"dim_out": dim}
        g["cam_dec"] = {"dim_in": 2 * dim}
    return g


def test_from_official_accepts_hub_and_yaml_layouts():
    large = DA3Config.preset("da3-large")
    hub = DA3Config.from_official({"model_name": "da3-large", "config": _yaml_graph("vitl", [11, 15, 19, 23], 8, 1024)})
    assert hub == large
    assert DA3Config.from_official(_yaml_graph("vitl", [11, 15, 19, 23], 8, 1024)).to_dict() == {**large.to_dict(), "name": "da3-vitl"}
    assert DA3Config.from_official({"model_name": "da3-large"}) == large
    assert DA3Config.preset("depth-anything/DA3-LARGE") == large
    mono = DA3Config.from_official(_yaml_graph("vitl", [4, 11, 17, 23], -1, 1024, with_cam=False))
    assert not mono.use_cam_enc and mono.unbuilt_modules == ("head",) and mono.alt_start == -1
    giant = DA3Config.preset("da3-giant")
    assert giant.ffn_layer == "swiglufused" and giant.ignored_prefixes == ("head.", "cam_dec.", "gs_head.", "gs_adapter.")


def test_from_official_rejects_surprises():
    with pytest.raises(ValueError, match="unknown vit_kwargs key 'qk_scale'"):
        DA3Config.from_official({"da3_config": {}, "vit_kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 4, "qk_scale": 2}})
    with pytest.raises(ValueError, match="disagrees"):
        DA3Config.from_official({"da3_config": {"net": {"name": "x", "out_layers": [1], "alt_start": 0}},
                                 "vit_kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 4, "alt_start": 1, "out_layers": [1]}})
    with pytest.raises(ValueError, match="unrecognised layout"):
        DA3Config.from_official({"foo": 1})


def test_feature_layer_last_is_block_11_for_every_size():
    assert resolve_feature_layer("last", 24) == 11 and resolve_feature_layer("last", 40) == 11
    assert resolve_feature_layer(3, 6) == 3
    with pytest.raises(ValueError, match="upstream crashes"):
        resolve_feature_layer("last", 6)
    with pytest.raises(ValueError, match="outside"):
        resolve_feature_layer(6, 6)


# ----------------------------------------------------------------------------- behaviour
@pytest.fixture(scope="module")
def tiny_net() -> DA3Net:
    torch.manual_seed(0)
    return DA3Net(DA3Config.preset("da3-tiny")).eval()


def _poses(b: int, v: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    e = torch.eye(4).repeat(b, v, 1, 1)
    e[..., :3, :3] = _axis_angle(torch.randn(b, v, 3, generator=g), torch.rand(b, v, generator=g))
    e[..., :3, 3] = torch.randn(b, v, 3, generator=g)
    k = torch.tensor([[95.2, 0, 112], [0, 95.2, 112], [0, 0, 1]]).repeat(b, v, 1, 1)
    return e, k


def test_only_blocks_up_to_the_requested_layer_run(tiny_net: DA3Net):
    calls = []
    hooks = [blk.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, blk in enumerate(tiny_net.vit.blocks)]
    try:
        e, k = _poses(1, 2)
        with torch.no_grad():
            tiny_net(torch.rand(1, 2, 3, 56, 56), e, k, [3])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1, 2, 3]


def test_unposed_mode_is_view_equivariant(tiny_net: DA3Net):
    """Unposed: reference-view token by tensor ops; permuting the views permutes the features."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 3, 56, 56)
    perm = [2, 0, 1]
    with torch.no_grad():
        a = tiny_net(x, None, None, [5])[0]
        b = tiny_net(x[:, perm], None, None, [5])[0]
        posed = tiny_net(x, *_poses(2, 3), [5])[0]
    torch.testing.assert_close(b, a[:, perm], atol=1e-5, rtol=1e-5)
    assert (a - posed).abs().max() > 1e-3  # the camera tokens matter
    two = tiny_net.vit._unposed_camera_tokens(torch.zeros(1, 2, 5, 64), select_reference=False)
    torch.testing.assert_close(two[0], tiny_net.vit.camera_token[0])  # [ref, src]


def test_inline_encoder_resize_scales_intrinsics():
    torch.manual_seed(0)
    enc = DA3InlineEncoder(DA3Config.preset("da3-tiny"), feature_layer=2, feature_size=8, process_res=112).eval()
    img = torch.randn(1, 2, 3, 224, 224)
    e, k = _poses(1, 2)
    x, k2 = enc.prepare_inputs(img, k)
    assert x.shape == (1, 2, 3, 112, 112) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(k2[..., :2, :], k[..., :2, :] * 0.5)
    with torch.no_grad():
        feat = enc(img, e, k)
        direct = enc.net(x, e, k2, [2])[0]
    assert feat.shape == (1, 2, 64, 8, 8)
    ref = F.interpolate(direct.permute(0, 1, 4, 2, 3).reshape(2, 64, 8, 8), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(feat, ref.reshape(1, 2, 64, 8, 8))
    with pytest.raises(ValueError, match=r"intrinsics must be \[B=1, V=2, 3, 3\]"):
        enc(img, e, k[:, :1])
    with pytest.raises(ValueError, match="both extrinsics and intrinsics"):
        enc(img, e, None)


def test_geometry_config_refuses_unsupported_official_settings():
    gc = {"da3_model_name": "da3-tiny", "da3_feature_layer": 5, "geometry_resampler_type": "perceiver_per_view"}
    with pytest.raises(NotImplementedError, match="geometry_resampler_type"):
        GeometryConfig.from_official(gc, hidden_size=64, mlp_ratio=4.0)
    with pytest.raises(ValueError, match="da3_input_dim=32"):
        GeometryConfig.from_official({"da3_model_name": "da3-tiny", "da3_feature_layer": 5, "da3_input_dim": 32},
                                     hidden_size=64, mlp_ratio=4.0)
