"""Layout, safe action, numpy resizing, the simulated R1Pro and the observation encoder."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image  # test-only reference; the agent itself never imports pillow

from tests.agents.fake_server import FakePolicyService
from xvla.agents.backoff import Backoff, BackoffConfig
from xvla.agents.imaging import resize_rgb, scale_intrinsics
from xvla.agents.observation import ObservationEncoder
from xvla.agents.sim_r1pro import SimR1Pro, SimR1ProConfig
from xvla.agents.stats import FRESH, PLAN, SAFE, ControlStats
from xvla.core.embodiments import PartKind, safe_action
from xvla.core.embodiments.r1pro import R1PRO
from xvla.core.tensors import numpy_to_tensor, tensor_to_numpy
from xvla.proto import policy_pb2 as pb


def test_r1pro_layout_matches_the_behavior_action_space():
    assert R1PRO.dim == 23
    spans = {p.name: (p.start, p.stop) for p in R1PRO.parts}
    assert spans == {"base": (0, 3), "torso": (3, 7), "left_arm": (7, 14), "left_gripper": (14, 15),
                     "right_arm": (15, 22), "right_gripper": (22, 23)}
    assert R1PRO.indices(PartKind.GRIPPER).tolist() == [14, 22]
    assert len(R1PRO.names()) == 23 and R1PRO.names()[14] == "left_gripper"


def test_safe_action_stops_base_holds_joints_keeps_gripper_command():
    state = np.arange(23, dtype=np.float32) / 10 + 1.0
    last = np.full(23, -7.0, dtype=np.float32)
    a = safe_action(R1PRO, state, last)
    assert np.all(a[0:3] == 0.0)
    np.testing.assert_array_equal(a[3:14], state[3:14])
    np.testing.assert_array_equal(a[15:22], state[15:22])
    assert a[14] == -7.0 and a[22] == -7.0  # the last command, not the measured opening
    assert safe_action(R1PRO, state, None)[22] == state[22]  # no command yet: measured
    with pytest.raises(ValueError, match="layout 'r1pro' needs 23"):
        safe_action(R1PRO, np.zeros(20), None)


@pytest.mark.parametrize("src,dst", [((720, 720), (224, 224)), ((480, 480), (224, 224)), ((481, 733), (224, 300)),
                                     ((100, 50), (224, 224))])
def test_resize_matches_pillow_bilinear_on_smooth_images(src, dst):
    h, w = src
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (h + w - 2)], -1).astype(np.uint8)
    ours = resize_rgb(img, *dst)
    ref = np.asarray(Image.fromarray(img).resize((dst[1], dst[0]), Image.BILINEAR, reducing_gap=None))
    assert ours.shape == (*dst, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref).max() <= 2


def test_resize_antialiases_and_drops_alpha():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (720, 720, 4), dtype=np.uint8)
    out = resize_rgb(rgba, 224, 224)
    np.testing.assert_array_equal(out, resize_rgb(np.ascontiguousarray(rgba[:, :, :3]), 224, 224))
    # A 1-pixel checkerboard averages to about grey (3x3 boxes hold 4 or 5 white pixels);
    # a plain subsample would alias it to black and white (127 away from grey).
    cb = ((np.indices((720, 720)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    assert np.abs(resize_rgb(cb, 224, 224).astype(int) - 128).max() <= 16
    with pytest.raises(ValueError, match="HxWx3"):
        resize_rgb(np.zeros((10, 10)), 5, 5)


def test_intrinsics_follow_the_image():
    k = np.array([[306.0, 0, 360], [0, 306.0, 360], [0, 0, 1]])
    k2 = scale_intrinsics(k, (720, 720), (224, 224))
    np.testing.assert_allclose(k2[0], [95.2, 0, 112], rtol=1e-5)  # the DA3-XVLA head intrinsics at 224
    np.testing.assert_allclose(k2[2], [0, 0, 1])


def test_sim_integrates_actions_and_renders_at_native_sizes():
    sim = SimR1Pro(SimR1ProConfig(dt_s=0.1, max_joint_speed=1.0))
    obs = sim.read_observation()
    assert {k: v.shape for k, v in obs.images.items()} == {
        "head": (720, 720, 3), "left_wrist": (480, 480, 3), "right_wrist": (480, 480, 3)}
    assert obs.state.shape == (23,) and obs.state.dtype == np.float32
    a = safe_action(R1PRO, obs.state, None)
    a[0] = 0.5  # drive forward at 0.5 m/s
    a[7] = obs.state[7] + 1.0  # left shoulder target 1 rad away: slew-limited to 0.1 rad per step
    for _ in range(5):
        sim.apply_action(a)
    np.testing.assert_allclose(sim.base_pose, [0.25, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(sim.state()[7], obs.state[7] + 0.5, atol=1e-6)
    np.testing.assert_allclose(sim.state()[0], 0.5)  # the state reports the base velocity
    after = sim.read_observation()
    assert not np.array_equal(after.images["head"], obs.images["head"])  # the scene moved with the base
    for name, pose in after.poses.items():
        r = pose.extrinsics[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9, err_msg=name)
        assert np.isclose(np.linalg.det(r), 1.0)
    with pytest.raises(ValueError, match="23"):
        sim.apply_action(np.zeros(20))
    with pytest.raises(ValueError, match="NaN"):
        sim.apply_action(np.full(23, np.nan))


def test_encoder_shrinks_frames_to_the_policy_contract():
    sim = SimR1Pro()
    obs = sim.read_observation()
    svc = FakePolicyService()
    svc.behaviour.needs_pose = True
    enc = ObservationEncoder(svc.describe(), frames="bicubic").encode(7, obs)
    m = enc.observation
    assert m.frame_index == 7
    assert [(c.name, c.image.height, c.image.width, len(c.image.data)) for c in m.cameras] == [
        (n, 224, 224, 224 * 224 * 3) for n in ("head", "left_wrist", "right_wrist")]
    assert enc.raw_bytes == 720 * 720 * 3 + 2 * 480 * 480 * 3 + 23 * 4
    assert enc.wire_bytes == m.ByteSize() < enc.raw_bytes / 5
    k = tensor_to_numpy(m.cameras[0].intrinsics)
    np.testing.assert_allclose(k[0, 0], 306.0 * 224 / 720, rtol=1e-5)
    np.testing.assert_array_equal(tensor_to_numpy(m.proprio), obs.state)
    # Without needs_pose no poses go out; cameras the policy does not read are left out.
    d = FakePolicyService().describe()
    del d.cameras[2]
    m2 = ObservationEncoder(d).encode(0, obs).observation
    assert [c.name for c in m2.cameras] == ["head", "left_wrist"] and not m2.cameras[0].HasField("extrinsics")
    # The default sends frames as captured: the server resizes them by the bundle's contract.
    assert [(c.image.height, c.image.width) for c in m2.cameras] == [(720, 720), (480, 480)]
    assert m2.cameras[0].image.data == obs.images["head"].tobytes()


def test_tensor_round_trip_and_size_check():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = numpy_to_tensor(a)
    assert t.dtype == pb.FLOAT32 and list(t.shape) == [3, 4]
    np.testing.assert_array_equal(tensor_to_numpy(t), a)
    t.data = t.data[:-4]
    with pytest.raises(ValueError, match=r"reply.action.data: shape \[3, 4\] of FLOAT32 needs 48 bytes, got 44"):
        tensor_to_numpy(t, "reply.action")


def test_backoff_is_jittered_exponential_and_resets():
    b = Backoff(BackoffConfig(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=1.0), rng=random.Random(0))
    caps = []
    for _ in range(6):
        caps.append(b.cap())
        d = b.next_delay()
        assert 0.0 <= d <= caps[-1]
    assert caps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    delays = [Backoff(BackoffConfig(initial_s=1.0, max_s=1.0), rng=random.Random(i)).next_delay() for i in range(50)]
    assert len(set(delays)) == 50 and min(delays) < 0.3 and max(delays) > 0.7  # spread, not lock-step
    b.reset()
    assert b.cap() == 0.1
    with pytest.raises(ValueError):
        BackoffConfig(initial_s=0)


def test_stats_account_for_every_tick():
    st = ControlStats(rate_hz=30)
    for k in (FRESH, FRESH, PLAN, SAFE):
        st.record_tick(k)
    st.skipped_ticks = 1
    st.jitter_ms = [0.1, 0.2, 5.0]
    s = st.summary()
    assert (s["ticks"], s["fresh_ticks"], s["plan_ticks"], s["safe_ticks"]) == (4, 2, 1, 1)
    assert s["accounted"] and s["jitter_ms"]["max"] == 5.0
    assert "4 ticks" in st.format() and "(5 slots" in st.format()
    with pytest.raises(ValueError):
        st.record_tick("X")
    for skill in ("navigate to", "navigate to", "pick up from", "navigate to"):
        st.record_chunk(skill, "default")
    assert st.summary()["skill_chunks"] == {"navigate to @ default": 3, "pick up from @ default": 1}
    assert st.skill_switches == 2 and "switches 2" in st.format()
