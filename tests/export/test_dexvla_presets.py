"""DexVLA presets: the real sizes match the official full-size key manifest; the tiny preset is seeded."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conformance.dexvla_goldens import dexvla_sets
from tests.conftest import conformance_root
from xvla.export.policies.dexvla.presets import PRESETS, build_meta, build_seeded, preset

_SETS = dexvla_sets(conformance_root()) if conformance_root().is_dir() else []
_MANIFESTS = [p / "full_size_key_manifest.json" for p in _SETS if (p / "full_size_key_manifest.json").is_file()]


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters counted once


@pytest.mark.skipif(not _MANIFESTS, reason="no DexVLA full_size_key_manifest.json under XVLA_CONFORMANCE_DIR")
def test_real_size_scaledp_h_matches_official_manifest():
    entry = json.loads(_MANIFESTS[0].read_text())["scaledp_h"]
    model = build_meta("dexvla-2b-scaledp-h")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k["name"]: tuple(k["shape"]) for k in entry["keys"]}
    assert len(official) == entry["n_keys"]
    missing, extra = sorted(official.keys() - ours.keys()), sorted(ours.keys() - official.keys())
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    wrong = {k: (ours[k], official[k]) for k in official if ours[k] != official[k]}
    assert not wrong, f"shape mismatches: {dict(list(wrong.items())[:5])}"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert _param_count(model) == entry["n_params_total"]
    by_top = {}
    for name, p in model.named_parameters():
        by_top[name.split(".")[0]] = by_top.get(name.split(".")[0], 0) + p.numel()
    assert by_top == entry["n_params_by_top_module (tied lm_head counted once)"]


@pytest.mark.skipif(not _MANIFESTS, reason="no DexVLA full_size_key_manifest.json under XVLA_CONFORMANCE_DIR")
def test_scaledp_l_head_matches_official_manifest():
    entry = json.loads(_MANIFESTS[0].read_text())["scaledp_l_policy_head_only"]
    head = build_meta("dexvla-2b-scaledp-l").policy_head
    ours = {f"policy_head.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == {k["name"]: tuple(k["shape"]) for k in entry["keys"]}
    assert _param_count(head) == entry["n_params_policy_head"]


def test_tiny_preset_is_seeded_and_deterministic():
    a, b, c = build_seeded("tiny-dexvla", 0), build_seeded("tiny-dexvla", 0), build_seeded("tiny-dexvla", 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    cfg = preset("tiny-dexvla")
    assert (cfg.head.state_dim, cfg.head.output_dim, cfg.head.num_queries) == (14, 14, 16)
    assert a.lm_head.weight is a.model.embed_tokens.weight


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(KeyError, match="tiny-dexvla"):
        preset("dexvla-7b")
    assert "dexvla-2b-scaledp-h" in PRESETS
