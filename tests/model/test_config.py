"""XVLAConfig: presets, official-format round trip, clear errors naming the field."""

from __future__ import annotations

import pytest

from xvla.export.policies.xvla.model import R1PRO_IDX_FOR_DELTA, XVLAConfig


@pytest.mark.parametrize("name", XVLAConfig.preset_names())
def test_every_preset_round_trips(name: str) -> None:
    cfg = XVLAConfig.preset(name)
    d = cfg.to_dict()
    assert d["florence_config"]["vision_config"]["model_type"] == "davit"
    assert XVLAConfig.from_dict(d) == cfg


def test_unknown_keys_survive_a_round_trip() -> None:
    d = XVLAConfig.preset("tiny").to_dict()
    d["transformers_version"] = "4.51.3"
    d["florence_config"]["text_config"]["decoder_layers"] = 1
    out = XVLAConfig.from_dict(d).to_dict()
    assert out["transformers_version"] == "4.51.3"
    assert out["florence_config"]["text_config"]["decoder_layers"] == 1


def test_presets_differ_where_they_should() -> None:
    r1pro = XVLAConfig.preset("tiny-r1pro-v20")
    assert (r1pro.action_mode, r1pro.real_action_dim, r1pro.max_action_dim) == ("auto", 23, 23)
    assert r1pro.idx_for_delta == R1PRO_IDX_FOR_DELTA and r1pro.skill_conditioning
    assert not XVLAConfig.preset("tiny").skill_conditioning
    assert XVLAConfig.preset("tiny", depth=3).depth == 3


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="tiny"):
        XVLAConfig.preset("nope")


@pytest.mark.parametrize("change, field", [
    ({"action_mode": "quaternion"}, "action_mode"),
    ({"prompt_mode": "concat"}, "prompt_mode"),
    ({"num_heads": 5}, "num_heads"),
])
def test_bad_values_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        XVLAConfig.preset("tiny", **change)


def test_missing_florence_config_is_an_error() -> None:
    d = XVLAConfig.preset("tiny").to_dict()
    del d["florence_config"]
    with pytest.raises(ValueError, match="florence_config"):
        XVLAConfig.from_dict(d)
    d = XVLAConfig.preset("tiny").to_dict()
    d["florence_config"]["vision_config"]["num_heads"] = [1, 2, 3]
    with pytest.raises(ValueError, match="num_heads"):
        XVLAConfig.from_dict(d)
