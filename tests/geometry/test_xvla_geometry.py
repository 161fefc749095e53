"""DA3-XVLA inside X-VLA: presets, once-per-chunk geometry, effect on actions, checkpoint keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import conformance_root
from tests.model.helpers import noise, observation
from xvla.export.policies.xvla.model import XVLA, XVLAConfig
from xvla.export.policies.xvla.model.geometry import GeometryEncoder, geometry_encoder_of


def _poses(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, 3, 3, 3, generator=g))
    e = torch.eye(4).repeat(b, 3, 1, 1)
    e[..., :3, :3] = q * torch.linalg.det(q)[..., None, None]
    e[..., :3, 3] = torch.randn(b, 3, 3, generator=g)
    k = torch.tensor([[95.2, 0, 112], [0, 95.2, 112], [0, 0, 1]]).repeat(b, 3, 1, 1)
    return e, k


@pytest.fixture(scope="module")
def model() -> XVLA:
    torch.manual_seed(0)
    return XVLA(XVLAConfig.preset("tiny-geo")).eval()


def test_presets_carry_the_geometry_settings():
    full = XVLAConfig.preset("da3-xvla").geometry
    assert (full.num_geometry_tokens, full.cross_attention_layers, full.cross_attention_heads) == (240, 6, 8)
    assert full.da3.name == "da3-large" and full.da3_process_res == 224 and full.use_posed_da3
    assert full.feature_layer == 11 and full.hidden_size == 1024
    assert XVLAConfig.preset("tiny").geometry is None
    cfg = XVLAConfig.preset("tiny-geo")
    again = XVLAConfig.from_dict(cfg.to_dict())
    assert again.geometry == cfg.geometry


def test_full_size_geometry_keys_on_meta():
    with torch.device("meta"):
        m = XVLA(XVLAConfig.preset("da3-xvla"))
    keys = m.state_dict().keys()
    da3 = [k for k in keys if k.startswith("da3_inline.model.model.")]
    assert da3 and not any(".head." in k or ".cam_dec." in k for k in da3)
    assert m.transformer.geometry_fusion is not None and len(m.transformer.geometry_fusion.layers) == 6
    assert m.geometry_conditioner.resampler.query.shape == (1, 240, 1024)
    assert not any(p.requires_grad for p in m.da3_inline.parameters())  # freeze_da3


def test_generate_actions_runs_geometry_once_per_chunk(model: XVLA):
    calls = {"da3": 0, "conditioner": 0, "fusion": 0}
    hooks = [
        model.da3_inline.register_forward_hook(lambda *a: calls.__setitem__("da3", calls["da3"] + 1)),
        model.geometry_conditioner.register_forward_hook(lambda *a: calls.__setitem__("conditioner", calls["conditioner"] + 1)),
        model.transformer.geometry_fusion.register_forward_hook(lambda *a: calls.__setitem__("fusion", calls["fusion"] + 1)),
    ]
    try:
        obs = observation(model, batch=2)
        e, k = _poses(2, 0)
        out = model.generate_actions(**obs, steps=4, noise=noise(model, 2), extrinsics=e, intrinsics=k)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, model.config.num_actions, model.action_space.dim)
    assert calls == {"da3": 1, "conditioner": 1, "fusion": 4}


def test_geometry_changes_the_actions(model: XVLA):
    obs, x1 = observation(model, batch=1), noise(model, 1)
    e, k = _poses(1, 0)
    e2, _ = _poses(1, 5)
    a = model.generate_actions(**obs, steps=2, noise=x1, extrinsics=e, intrinsics=k)
    again = model.generate_actions(**obs, steps=2, noise=x1, extrinsics=e, intrinsics=k)
    moved = model.generate_actions(**obs, steps=2, noise=x1, extrinsics=e2, intrinsics=k)
    assert torch.equal(a, again)
    assert (a - moved).abs().max() > 1e-4
    # and the tokens reach the transformer: with the fusion removed the result differs again
    fusion, model.transformer.geometry_fusion = model.transformer.geometry_fusion, None
    try:
        plain = model.generate_actions(**obs, steps=2, noise=x1, extrinsics=e, intrinsics=k)
    finally:
        model.transformer.geometry_fusion = fusion
    assert (a - plain).abs().max() > 1e-4


def test_posed_model_requires_poses(model: XVLA):
    obs = observation(model, batch=1)
    with pytest.raises(ValueError, match="posed"):
        model.generate_actions(**obs, steps=1)
    e, k = _poses(1, 0)
    with pytest.raises(ValueError, match="together"):
        model.generate_actions(**obs, steps=1, extrinsics=e)


def test_geometry_encoder_of_shares_the_model_weights(model: XVLA):
    enc = geometry_encoder_of(model)
    assert isinstance(enc, GeometryEncoder) and enc.da3_inline is model.da3_inline
    obs = observation(model, batch=2)
    e, k = _poses(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(enc(obs["image_input"], e, k),
                                   model.compute_geometry_tokens(obs["image_input"], e, k))
    assert set(enc.state_dict()) <= set(model.state_dict())


def test_checkpoint_round_trip_and_ignored_da3_heads(model: XVLA, tmp_path: Path):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = XVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.load_report.ignored == []
    obs, x1 = observation(model, batch=1), noise(model, 1)
    e, k = _poses(1, 0)
    ref = model.generate_actions(**obs, steps=2, noise=x1, extrinsics=e, intrinsics=k)
    torch.testing.assert_close(loaded.generate_actions(**obs, steps=2, noise=x1, extrinsics=e, intrinsics=k), ref)
    # An official DA3-XVLA checkpoint also stores DA3's depth head and camera decoder: skipped and reported.
    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    sd = load_file(str(weights))
    sd["da3_inline.model.model.head.norm.weight"] = torch.ones(128)
    sd["da3_inline.model.model.cam_dec.fc_t.bias"] = torch.zeros(3)
    save_file(sd, str(weights))
    loaded = XVLA.from_pretrained(tmp_path / "ckpt")
    assert loaded.load_report.ignored == ["da3_inline.model.model.cam_dec.fc_t.bias", "da3_inline.model.model.head.norm.weight"]
    # ... but anything else unknown under the DA3 prefix is still an error
    sd["da3_inline.model.model.backbone.pretrained.bogus"] = torch.zeros(1)
    save_file(sd, str(weights))
    with pytest.raises(ValueError, match="bogus"):
        XVLA.from_pretrained(tmp_path / "ckpt")


def test_official_geometry_weights_load_into_xvla_by_key_name():
    """The golden DA3 + conditioner + fusion weights, under their X-VLA checkpoint names, load into
    an X-VLA of the goldens' sizes and reproduce the golden geometry tokens."""
    from tests.conformance.da3_goldens import da3_root, load_set

    root = da3_root(conformance_root()) if conformance_root().is_dir() else None
    if root is None:
        pytest.skip("no DA3 goldens")
    s = load_set(root)
    gc = dict(s.config["geometry_conditioning"], da3_model_name="custom", da3_config=s.config,
              da3_feature_layer=s.geometry.da3_feature_layer, da3_feature_size=s.geometry.da3_feature_size,
              da3_process_res=s.geometry.da3_process_res)
    cfg = XVLAConfig.preset("tiny").replace(hidden_size=s.geometry.hidden_size, num_heads=s.geometry.cross_attention_heads,
                                           mlp_ratio=s.geometry.mlp_ratio, geometry_conditioning=gc)
    m = XVLA(cfg).eval()
    sd = {"da3_inline.model.model." + k: v for k, v in s.weights.items()}
    sd.update(s.geometry_weights)
    sd = {k: v for k, v in sd.items() if not k.startswith(m.ignored_checkpoint_prefixes)}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert unexpected == []
    assert not [k for k in missing if k.startswith(("da3_inline.", "geometry_conditioner.", "transformer.geometry_fusion."))]
    i = s.inputs
    with torch.no_grad():
        tokens = m.compute_geometry_tokens(i["image_input"], i["extrinsics"], i["intrinsics"])
        fused = m.transformer.geometry_fusion(i["policy_tokens"], tokens)
    torch.testing.assert_close(tokens, s.geometry_outputs["geometry_tokens"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused, s.geometry_outputs["fused_policy_tokens"], atol=1e-5, rtol=1e-4)
