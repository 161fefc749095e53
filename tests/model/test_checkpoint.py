"""Checkpoint I/O: bit-identical round trip, sharding, tied-embedding alias, named key errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.helpers import observation, randomise_, tiny_model
from xvla.export.policies.xvla.checkpoint import INDEX_NAME, SHARED_KEY, TIED_KEY, WEIGHTS_NAME, CheckpointError
from xvla.export.policies.xvla.model import XVLA


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[XVLA, Path]:
    model = tiny_model("tiny-r1pro-v20")
    randomise_(model, seed=11, std=0.1)  # no zero hubs: a lost tensor would show
    path = model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")
    return model, path


def _assert_same_state(a: XVLA, b: XVLA) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bit_identical(saved) -> None:
    model, path = saved
    stored = load_file(str(path / WEIGHTS_NAME))
    assert SHARED_KEY in stored and TIED_KEY not in stored  # tied embedding stored once, officially named
    loaded = XVLA.from_pretrained(path)
    assert loaded.config == model.config
    _assert_same_state(model, loaded)
    obs = observation(model, batch=1)
    x1 = torch.randn(1, 30, 23)
    assert torch.equal(model.generate_actions(**obs, steps=1, noise=x1), loaded.generate_actions(**obs, steps=1, noise=x1))


def test_sharded_index_loads(saved, tmp_path) -> None:
    model, _ = saved
    path = model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    index = json.loads((path / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (path / WEIGHTS_NAME).exists()
    _assert_same_state(model, XVLA.from_pretrained(path))


def _tamper(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / WEIGHTS_NAME))
    edit(state)
    save_file(state, str(dst / WEIGHTS_NAME), metadata={"format": "pt"})
    return dst


def test_tied_embedding_under_the_encoder_alias_loads(saved, tmp_path) -> None:
    model, src = saved
    path = _tamper(src, tmp_path / "alias", lambda s: s.__setitem__(TIED_KEY, s.pop(SHARED_KEY)))
    loaded = XVLA.from_pretrained(path)
    _assert_same_state(model, loaded)
    lm = loaded.vlm.language_model.model
    assert lm.encoder.embed_tokens.weight is lm.shared.weight


def test_missing_and_unexpected_keys_are_named(saved, tmp_path) -> None:
    _, src = saved
    path = _tamper(src, tmp_path / "bad", lambda s: (s.pop("transformer.norm.bias"),
                                                     s.__setitem__("vlm.language_model.lm_head.weight", torch.zeros(2))))
    with pytest.raises(CheckpointError) as err:
        XVLA.from_pretrained(path)
    assert "transformer.norm.bias" in str(err.value) and "vlm.language_model.lm_head.weight" in str(err.value)
    loaded = XVLA.from_pretrained(path, strict=False)  # the explicit opt-out reports what it skipped
    assert loaded.load_report.missing == ["transformer.norm.bias"]
    assert loaded.load_report.unexpected == ["vlm.language_model.lm_head.weight"]


def test_shape_mismatch_is_always_an_error(saved, tmp_path) -> None:
    _, src = saved
    path = _tamper(src, tmp_path / "shape", lambda s: s.__setitem__("transformer.norm.bias", torch.zeros(7)))
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="transformer.norm.bias"):
            XVLA.from_pretrained(path, strict=strict)


def test_differing_tied_copies_are_rejected(saved, tmp_path) -> None:
    _, src = saved
    path = _tamper(src, tmp_path / "tied", lambda s: s.__setitem__(TIED_KEY, s[SHARED_KEY] + 1))
    with pytest.raises(CheckpointError, match="tied"):
        XVLA.from_pretrained(path)
