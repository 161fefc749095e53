"""DexVLA config (diff-dict semantics) and strict checkpoint loading by key name."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conformance.dexvla_goldens import dexvla_sets
from tests.conftest import conformance_root
from xvla.export.policies.dexvla.checkpoint import load_strict
from xvla.export.policies.dexvla.config import VisionConfig, config_from_dict, load_config
from xvla.export.policies.dexvla.presets import build_seeded

_SETS = dexvla_sets(conformance_root()) if conformance_root().is_dir() else []
needs_set = pytest.mark.skipif(not _SETS, reason="no DexVLA conformance set (tiny_model/config.json)")


@pytest.fixture(scope="module")
def model():
    return build_seeded("tiny-dexvla", 0)


@pytest.fixture()
def state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def test_tied_lm_head_may_be_absent_and_is_tied_after_loading(state):
    fresh = build_seeded("tiny-dexvla", 1)
    load_strict(fresh, state)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert torch.equal(fresh.lm_head.weight, state["model.embed_tokens.weight"])


def test_missing_key_is_named(model, state):
    del state["policy_head.pos_embed"]
    with pytest.raises(KeyError, match="policy_head.pos_embed"):
        load_strict(model, state)


def test_unexpected_key_is_named(model, state):
    state["policy_head.extra_proj.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="policy_head.extra_proj.weight"):
        load_strict(model, state)


def test_wrong_shape_is_named(model, state):
    state["reasoning_film.scale_fc.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="reasoning_film.scale_fc.bias"):
        load_strict(model, state)


def test_untied_lm_head_in_a_tied_checkpoint_is_refused(model, state):
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_strict(model, state)


@needs_set
def test_official_config_json_with_vision_defaults():
    folder = _SETS[0] / "tiny_model"
    raw = json.loads((folder / "config.json").read_text())
    cfg = load_config(folder)
    assert cfg.text.hidden_size == raw["hidden_size"]
    assert cfg.text.mrope_section == tuple(raw["rope_scaling"]["mrope_section"])
    assert cfg.head.num_queries == raw["policy_head_config"]["num_queries"]
    assert cfg.pad_token_id == 1000  # from the folder's tokenizer (official literal 151643)
    for key in ("patch_size", "spatial_merge_size", "temporal_patch_size", "mlp_ratio", "hidden_act"):
        if key not in raw["vision_config"]:  # diff-dict: absent keys take Qwen2VLVisionConfig defaults
            assert getattr(cfg.vision, key) == getattr(VisionConfig(), key)
    bad = copy.deepcopy(raw)
    bad["model_type"] = "qwen2_vl"
    with pytest.raises(ValueError, match="model_type"):
        config_from_dict(bad)
    bad = copy.deepcopy(raw)
    del bad["policy_head_config"]
    with pytest.raises((KeyError, ValueError), match="policy_head"):
        config_from_dict(bad)
