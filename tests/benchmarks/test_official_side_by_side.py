"""The side-by-side benchmark against the official X-VLA server: its pure parts, without the official venv.

The measurement itself needs the official environment (``benchmarks/official/setup_official_env.sh``)
and is never run by the test suite; these tests pin what makes it fair: the official processor
is configured from the bundle's preprocessing contract, the requests are what the official
``/act`` decodes, the interleaving alternates who goes first and drops the warm-up rounds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xvla.agents.bridges.codecs import json_numpy_value
from xvla.benchmarks import official_server as sbs

PREPROCESS = {"image_size": [256, 192], "resize_filter": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
              "camera_names": ["head", "left_wrist", "right_wrist"], "max_text_len": 50}


def test_official_processor_follows_the_bundle_contract():
    cfg = sbs.official_processor_config(PREPROCESS)
    assert cfg["image_processor_type"] == "CLIPImageProcessor"
    assert cfg["size"] == {"height": 256, "width": 192} and cfg["do_resize"] and not cfg["do_center_crop"]
    assert cfg["resample"] == 3  # PIL bicubic
    assert cfg["image_mean"] == [0.5, 0.4, 0.3] and cfg["image_std"] == [0.2, 0.25, 0.3]
    assert cfg["rescale_factor"] == pytest.approx(1 / 255)
    with pytest.raises(ValueError, match="resize_filter"):
        sbs.official_processor_config(dict(PREPROCESS, resize_filter="bilinear"))


def test_official_request_is_what_the_official_act_decodes():
    obs = sbs.observation_pool(1, views=2, size=32, proprio_dim=23, instruction="turn on the radio", seed=3)[0]
    client = sbs.OfficialActClient.__new__(sbs.OfficialActClient)  # encode only: no connection
    client.domain_id, client.steps = 19, 10
    body = json.loads(client.encode(obs))
    assert set(body) == {"image0", "image1", "proprio", "language_instruction", "domain_id", "steps"}
    # the official server calls json_numpy.loads(payload[key]): each array must be a json_numpy *string*
    for i, img in enumerate(obs.images):
        assert isinstance(body[f"image{i}"], str)
        np.testing.assert_array_equal(json_numpy_value(body[f"image{i}"], "image"), img)
    np.testing.assert_array_equal(json_numpy_value(body["proprio"], "proprio"), obs.proprio)
    assert (body["language_instruction"], body["domain_id"], body["steps"]) == ("turn on the radio", 19, 10)


def test_same_observation_pool_for_both_sides_is_seeded():
    a = sbs.observation_pool(3, 3, 16, 23, "x", seed=1)
    b = sbs.observation_pool(3, 3, 16, 23, "x", seed=1)
    assert all(np.array_equal(p, q) for oa, ob in zip(a, b) for p, q in zip(oa.images, ob.images))
    assert not np.array_equal(a[0].images[0], a[1].images[0])
    assert a[0].images[0].shape == (16, 16, 3) and a[0].images[0].dtype == np.uint8 and a[0].proprio.shape == (23,)


class _Recorder:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def request(self, obs):
        self.log.append(self.name)
        return sbs.Sample(float(len(self.log)))


def test_interleaving_alternates_who_goes_first_and_drops_warmup():
    log: list[str] = []
    pool = sbs.observation_pool(2, 1, 8, 4, "x", seed=0)
    got = sbs.interleaved(_Recorder("ours", log), _Recorder("official", log), pool, n=4, warmup=2)
    assert log == ["ours", "official", "official", "ours"] * 3
    assert len(got["ours"]) == len(got["official"]) == 4
    assert [s.rtt_ms for s in got["ours"]] == [5.0, 8.0, 9.0, 12.0]  # rounds 2..5 only


def test_summary_ratios():
    ours = list(np.arange(1, 101, dtype=float))
    out = sbs.summarise(ours, [2 * x for x in ours])
    assert out["ratio_p50"] == pytest.approx(0.5) and out["ratio_p99"] == pytest.approx(0.5)
    assert out["ours_ms"]["n"] == out["official_ms"]["n"] == 100


def test_cli_refuses_a_missing_official_environment(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sbs.parse_args(["--official-venv", str(tmp_path / "none"), "--official-code", str(tmp_path),
                        "--checkpoint", str(tmp_path)])
    assert e.value.code == 2
    assert "setup_official_env.sh" in capsys.readouterr().err
