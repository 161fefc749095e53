"""Our DA3 backbone and DA3-XVLA geometry path against the goldens from the official code.

The folder comes from `XVLA_CONFORMANCE_DIR` (fixture `conformance_dir`); every size, schedule
(alt / QK-norm / RoPE start, out layers), feature layer, process resolution and K is read from the
set's config.json and golden keys, so a held-out set with another schedule runs through the same
tests. Tolerances are the README's suggestions for an fp32 re-implementation (section 6).

Compared: pose_encoding, cam_token, every `feat_layer_*` / `all_export.feat_layer_*`, every
`out_layer_*.{patch_tokens,camera_token}`, da3_inline_feature, geometry_tokens,
fused_policy_tokens, and (if present) the API-style file. Not compared: `head.*` and `cam_dec.*`,
the DualDPT / camera-decoder outputs of modules we deliberately do not build (X-VLA never reads
them; `test_every_golden_is_compared_or_explicitly_skipped` keeps this list honest).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conformance.da3_goldens import (
    CONDITIONER_PREFIX,
    FUSION_PREFIX,
    DA3Set,
    build_da3,
    build_encoder,
    build_fusion,
    da3_root,
    load_set,
)
from xvla.export.policies.xvla.model.da3 import DA3Config, DA3Net, load_da3_state_dict, pose_encoding
from xvla.export.policies.xvla.model.geometry import GeometryConditioner, GeometryConfig, GeometryCrossAttentionFusion

FEATURES = dict(atol=1e-4, rtol=1e-4)  # DA3 patch features (|x| up to ~6)
TOKENS = dict(atol=1e-5, rtol=1e-4)  # camera tokens, pose encodings, conditioner / fusion outputs
NOT_BUILT = ("head.", "cam_dec.")  # golden outputs of modules we do not build


@pytest.fixture(scope="module")
def gold(conformance_dir: Path) -> DA3Set:
    root = da3_root(conformance_dir)
    if root is None:
        pytest.skip(f"no DA3 goldens under {conformance_dir}")
    return load_set(root)


@pytest.fixture(scope="module")
def net(gold: DA3Set) -> DA3Net:
    return build_da3(gold)


@pytest.fixture(scope="module")
def da3_input(gold: DA3Set):
    """(x in [0,1] at the process size, E, K) exactly as DA3InlineEncoder hands them to the network."""
    enc = build_encoder(gold)
    x, k = enc.da3_inline.prepare_inputs(gold.inputs["image_input"], gold.inputs["intrinsics"])
    return x, gold.inputs["extrinsics"].float(), k


@pytest.fixture(scope="module")
def all_features(gold: DA3Set, net: DA3Net, da3_input) -> dict[int, torch.Tensor]:
    x, e, k = da3_input
    layers = sorted(set(gold.layer_keys(r"all_export\.feat_layer_(\d+)")) | set(gold.layer_keys(r"feat_layer_(\d+)")))
    with torch.no_grad():
        feats = net(x, e, k, layers)
    return dict(zip(layers, feats))


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str, tol: dict) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != golden {tuple(ref.shape)}"
    torch.testing.assert_close(ours, ref, **tol, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("prefix", ["", "model.", "da3_inline.model.model."])
def test_tiny_weights_load_strictly_by_key_name(gold: DA3Set, prefix: str):
    net = DA3Net(gold.da3)
    sd = {prefix + k: v for k, v in gold.weights.items()}
    report = load_da3_state_dict(net, sd)
    assert report.prefix == prefix
    ours = net.state_dict()
    # every tensor we build came from the file, bit for bit
    assert sorted(report.loaded) == sorted(ours)
    for k, v in ours.items():
        assert torch.equal(v, gold.weights[k]), k
    # and everything else in the file is exactly the modules we do not build
    assert sorted(report.ignored) == sorted(set(gold.weights) - set(ours))
    assert all(k.startswith(gold.da3.ignored_prefixes) for k in report.ignored)


def test_loading_rejects_missing_and_unknown_keys(gold: DA3Set):
    sd = dict(gold.weights)
    victim = next(k for k in sd if k.startswith("backbone.pretrained.blocks."))
    del sd[victim]
    with pytest.raises(KeyError, match="missing"):
        load_da3_state_dict(DA3Net(gold.da3), sd)
    sd = dict(gold.weights)
    sd["backbone.pretrained.extra_token"] = torch.zeros(1)
    with pytest.raises(KeyError, match="extra_token"):
        load_da3_state_dict(DA3Net(gold.da3), sd)


# ----------------------------------------------------------------------------- camera
def test_pose_encoding(gold: DA3Set, da3_input):
    x, e, k = da3_input
    _close(pose_encoding(e, k, tuple(x.shape[-2:])), gold.outputs["pose_encoding"], "pose_encoding", TOKENS)


def test_camera_token(gold: DA3Set, net: DA3Net, da3_input):
    x, e, k = da3_input
    with torch.no_grad():
        cam = net.camera_tokens(e, k, tuple(x.shape[-2:]))
    _close(cam, gold.outputs["cam_token"], "cam_token", TOKENS)


# ----------------------------------------------------------------------------- backbone
def test_exported_feature_layers(gold: DA3Set, all_features):
    keys = gold.layer_keys(r"all_export\.feat_layer_(\d+)")
    singles = gold.layer_keys(r"feat_layer_(\d+)")
    assert singles, "no feat_layer_* golden"
    assert gold.feature_layer in singles, f"golden feat layers {sorted(singles)} lack the configured {gold.feature_layer}"
    for i, key in sorted(keys.items()) + sorted(singles.items()):
        _close(all_features[i], gold.outputs[key], key, FEATURES)


def test_out_layers(gold: DA3Set, net: DA3Net, da3_input):
    x, e, k = da3_input
    patch_keys = gold.layer_keys(r"out_layer_(\d+)\.patch_tokens")
    assert sorted(patch_keys) == sorted(gold.da3.out_layers), "golden out layers differ from config out_layers"
    with torch.no_grad():
        outs = net.intermediate_layers(x, e, k)
    for i, (patches, camera) in zip(gold.da3.out_layers, outs):
        _close(patches, gold.outputs[f"out_layer_{i}.patch_tokens"], f"out_layer_{i}.patch_tokens", FEATURES)
        _close(camera, gold.outputs[f"out_layer_{i}.camera_token"], f"out_layer_{i}.camera_token", FEATURES)


def test_api_style_outputs(gold: DA3Set, net: DA3Net):
    """Official-API semantics (normalised extrinsics, ImageNet-normalised unclamped input): the
    same network must reproduce them when fed those inputs."""
    path = gold.root / "da3_api_style_outputs.safetensors"
    if not path.is_file():
        pytest.skip("no API-style goldens in this set")
    api = load_file(str(path))
    x = gold.inputs["image_input"]
    e, k = api["api_style.extrinsics_normalized"], gold.inputs["intrinsics"]
    layer = gold.feature_layer
    with torch.no_grad():
        feat = net(x, e, k, [layer])[0]
        cam = net.camera_tokens(e, k, tuple(x.shape[-2:]))
    _close(pose_encoding(e, k, tuple(x.shape[-2:])), api["api_style.pose_encoding"], "api pose", TOKENS)
    _close(cam, api["api_style.cam_token"], "api cam_token", TOKENS)
    _close(feat, api[f"api_style.feat_layer_{layer}"], "api feat", FEATURES)


# ----------------------------------------------------------------------------- DA3-XVLA path
def test_da3_inline_feature(gold: DA3Set):
    enc = build_encoder(gold)
    i = gold.inputs
    with torch.no_grad():
        feat = enc.da3_inline(i["image_input"], i["extrinsics"], i["intrinsics"])
    _close(feat, gold.outputs["da3_inline_feature"], "da3_inline_feature", FEATURES)


def test_geometry_tokens(gold: DA3Set):
    enc = build_encoder(gold)
    i = gold.inputs
    ref = gold.geometry_outputs["geometry_tokens"]
    assert ref.shape[1] == gold.geometry.num_geometry_tokens
    with torch.no_grad():
        from_golden_feature = enc.geometry_conditioner(gold.outputs["da3_inline_feature"])
        end_to_end = enc(i["image_input"], i["extrinsics"], i["intrinsics"])
    _close(from_golden_feature, ref, "geometry_tokens (golden feature in)", TOKENS)
    _close(end_to_end, ref, "geometry_tokens (images in)", TOKENS)


def test_fused_policy_tokens(gold: DA3Set):
    fusion = build_fusion(gold)
    with torch.no_grad():
        fused = fusion(gold.inputs["policy_tokens"], gold.geometry_outputs["geometry_tokens"])
    _close(fused, gold.geometry_outputs["fused_policy_tokens"], "fused_policy_tokens", TOKENS)


def test_geometry_weights_load_strictly(gold: DA3Set):
    enc, fusion = build_encoder(gold), build_fusion(gold)
    ours = {CONDITIONER_PREFIX + k for k in enc.geometry_conditioner.state_dict()}
    ours |= {FUSION_PREFIX + k for k in fusion.state_dict()}
    assert ours == set(gold.geometry_weights)


def test_every_golden_is_compared_or_explicitly_skipped(gold: DA3Set):
    compared = {"pose_encoding", "cam_token", "da3_inline_feature"}
    compared |= set(gold.layer_keys(r"all_export\.feat_layer_(\d+)").values())
    compared |= set(gold.layer_keys(r"feat_layer_(\d+)").values())
    compared |= {f"out_layer_{i}.{p}" for i in gold.da3.out_layers for p in ("patch_tokens", "camera_token")}
    left = {k for k in gold.outputs if k not in compared and not k.startswith(NOT_BUILT)}
    assert not left, f"golden tensors nobody compares: {sorted(left)}"
    assert set(gold.geometry_outputs) == {"geometry_tokens", "fused_policy_tokens"}


# ----------------------------------------------------------------------------- full-size manifests
def _manifest(gold: DA3Set, name: str) -> dict:
    path = gold.root / name
    if not path.is_file():
        pytest.skip(f"{name} not in this set")
    return json.loads(path.read_text())


def test_manifest_da3_large(gold: DA3Set):
    """Full-size DA3 (meta device): our keys/shapes plus the explicitly ignored head/cam_dec keys are
    exactly the official state dict. The ignored prefixes must each cover at least one key, cover
    nothing we build, and together cover every key we do not build."""
    m = _manifest(gold, "manifest_da3_large.json")
    official = {k: tuple(v) for k, v in m["state_dict"].items()}
    cfg = DA3Config.preset(Path(m["source"]["config"]).stem)
    with torch.device("meta"):
        net = DA3Net(cfg)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    ignored = {k for k in official if k.startswith(cfg.ignored_prefixes)}
    assert not any(k.startswith(cfg.ignored_prefixes) for k in ours)
    assert set(ours) | ignored == set(official)
    assert set(ours) & ignored == set()
    for prefix in cfg.ignored_prefixes:
        assert any(k.startswith(prefix) for k in official), f"ignored prefix {prefix} matches nothing"
    mismatched = {k: (s, official[k]) for k, s in ours.items() if official[k] != s}
    assert not mismatched, mismatched
    per_module: dict[str, int] = {}
    for k, p in net.named_parameters():
        per_module[k.split(".")[0]] = per_module.get(k.split(".")[0], 0) + p.numel()
    for top, count in per_module.items():
        assert count == m["parameters_by_top_module"][top], top


def test_manifest_geometry_full(gold: DA3Set):
    m = _manifest(gold, "manifest_geometry_full.json")
    used = m["values_used"]
    hidden = next(v for k, v in used.items() if k.replace(" ", "_").endswith("hidden_size"))
    ratio = next(v for k, v in used.items() if k.replace(" ", "_").endswith("mlp_ratio"))
    cfg = GeometryConfig.from_official(used["geometry_conditioning"], hidden_size=int(hidden), mlp_ratio=float(ratio))
    with torch.device("meta"):
        cond = GeometryConditioner.from_config(cfg)
        fusion = GeometryCrossAttentionFusion.from_config(cfg)
    ours = {CONDITIONER_PREFIX + k: tuple(v.shape) for k, v in cond.state_dict().items()}
    ours |= {FUSION_PREFIX + k: tuple(v.shape) for k, v in fusion.state_dict().items()}
    assert ours == {k: tuple(v) for k, v in m["state_dict"].items()}
    counts = m["num_parameters"]
    assert sum(p.numel() for p in cond.parameters()) == counts["geometry_conditioner"]
    assert sum(p.numel() for p in fusion.parameters()) == counts["transformer.geometry_fusion"]
