"""Policy on fake engines: the numpy API (generate_actions / act), RTC prefix inpainting, the inverse postprocess."""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtime.fakes import FAKE_D, FAKE_SKILLS, FAKE_T, FakeAction, FakeVLM, fake_policy
from xvla.core.flow_matching import postprocess_actions, unpostprocess_actions
from xvla.runtime.policies.base import Timings
from xvla.runtime.policies.xvla.runtime import Observation


def inputs(b=2):
    rng = np.random.default_rng(0)
    return dict(input_ids=np.ones((b, 8), np.int64), image_input=rng.standard_normal((b, 2, 3, 8, 8)).astype(np.float32),
                image_mask=np.ones((b, 2), bool), domain_id=np.zeros(b, np.int64),
                proprio=np.array([[1, 2, 3], [10, 20, 30]][:b], np.float32))


def test_generate_actions_numpy_in_out(tmp_path):
    pol = fake_policy(tmp_path / "p")
    out = pol.generate_actions(**inputs(), steps=3)
    assert out.shape == (2, FAKE_T, FAKE_D) and out.dtype == np.float32
    expect = inputs()["proprio"][:, None, :] + np.arange(FAKE_T, dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(out, expect)
    aux = pol.generate_actions(**inputs(), steps=3, return_aux=True)
    assert set(aux) >= {"actions", "skill_logits", "skill_id", "progress", "timings"}
    assert aux["timings"]["denoise"] > 0


def test_skill_argmax_and_progress_like_the_torch_model(tmp_path):
    pol = fake_policy(tmp_path / "p", vlm=FakeVLM(lambda i: [0.0, 0.0, 9.0], 3), action=FakeAction(skill_input=True),
                      skills=FAKE_SKILLS)
    aux = pol.generate_actions(**inputs(1), steps=2, return_aux=True)
    assert aux["skill_id"].tolist() == [2]
    assert aux["progress"] == pytest.approx([0.9])  # fake progress head linspace(0.1, 0.9)[2]
    assert aux["actions"][0, 0] == pytest.approx(np.array([1, 2, 3]) + 200.0)
    forced = pol.generate_actions(**inputs(1), steps=2, skill_id=np.array([1]))
    assert forced[0, 0] == pytest.approx(np.array([1, 2, 3]) + 100.0)


def test_prefix_is_imposed_at_every_step(tmp_path):
    seen = []

    class Spy(FakeAction):
        def run(self, inputs):
            seen.append(inputs["x_t"].copy())
            return super().run(inputs)

    pol = fake_policy(tmp_path / "p", action=Spy())
    enc = pol.encode(inputs(1)["input_ids"], inputs(1)["image_input"], inputs(1)["image_mask"])
    prefix = np.full((1, 3, FAKE_D), 7.0, np.float32)
    x1 = np.random.default_rng(1).standard_normal((1, FAKE_T, FAKE_D)).astype(np.float32)
    actions, raw = pol.denoise(enc, inputs(1)["proprio"], np.zeros(1, np.int64), steps=4, noise=x1, prefix=prefix,
                               timings=Timings())
    assert actions[0, :3] == pytest.approx(np.full((3, FAKE_D), 7.0))  # the committed prefix, verbatim
    assert actions[0, 3] == pytest.approx(np.array([1, 2, 3]) + 3.0)  # the model's own prediction after it
    # step k (t = (4-k)/4) saw x_t = t*x1 + (1-t)*prefix on the prefix rows
    for k, x_t in enumerate(seen):
        t = np.float32((4 - k) / 4)
        np.testing.assert_allclose(x_t[0, :3], t * x1[0, :3] + (1 - t) * 7.0, rtol=1e-6)


def test_unpostprocess_roundtrips_through_postprocess():
    space = {"dim": 20, "model_dim": 20, "sigmoid_dims": [9, 19], "idx_for_delta": [0, 1, 2]}
    rng = np.random.default_rng(0)
    committed = rng.uniform(0.05, 0.95, (2, 5, 20)).astype(np.float32)
    proprio = rng.standard_normal((2, 20)).astype(np.float32)
    raw = unpostprocess_actions(committed, proprio, space)
    np.testing.assert_allclose(postprocess_actions(raw, proprio, space), committed, atol=1e-5)


def test_act_takes_a_raw_observation(tmp_path):
    pol = fake_policy(tmp_path / "p")
    img = np.zeros((30, 40, 3), np.uint8)
    chunk = pol.act(Observation(images={"head": img}, proprio=np.array([5, 6, 7], np.float64), instruction="pick"))
    assert chunk.shape == (FAKE_T, FAKE_D)
    assert chunk[0] == pytest.approx([5, 6, 7])
    aux = pol.act({"images": {"head": img, "left_wrist": img}, "proprio": np.zeros(3), "instruction": "x"}, return_aux=True)
    assert aux["timings"]["preprocess"] > 0


def test_header_domain_unset_means_bundle_default(tmp_path):
    from types import SimpleNamespace

    from xvla.core.errors import InputError
    from xvla.proto import policy_pb2 as pb
    from xvla.runtime.execution import ExecutionConfig
    from xvla.runtime.session import resolve_header

    pol = fake_policy(tmp_path / "p", domains={"default": 19, "r1pro": 19})
    svc = SimpleNamespace(gate_policy=pol, policies={"default": pol}, routes=None,
                          config=SimpleNamespace(control_rate_hz=30.0, execution=ExecutionConfig()))
    assert resolve_header(svc, pb.SessionHeader(task_id=-1)).domain_id == 19  # unset: the bundle's default
    assert resolve_header(svc, pb.SessionHeader(task_id=-1, domain_id=0)).domain_id == 0  # explicit 0 stays 0
    with pytest.raises(InputError, match="header.domain_id"):
        resolve_header(svc, pb.SessionHeader(task_id=-1, domain_id=30))
