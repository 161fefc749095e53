"""The R1Pro raw-proprio layouts: derived from the evaluators' config, checked against their written-out tables."""

from __future__ import annotations

import numpy as np
import pytest

from xvla.core.embodiments.r1pro_layouts import (
    PROPRIO_OBS_2026,
    R1PRO_2025,
    R1PRO_2026,
    detect_layout,
)

# BEHAVIOR-1K OmniGibson/omnigibson/eval/utils/eval_utils.py PROPRIOCEPTION_INDICES["R1Pro"] (2026 evaluator),
# written out by the evaluator itself; our layout is derived from r1pro.yaml's proprio_obs list instead.
EVAL_UTILS_2026 = {
    "base_qvel": (0, 3), "arm_left_qpos": (3, 10), "arm_left_qvel": (10, 17), "eef_left_pos": (17, 20),
    "eef_left_quat": (20, 24), "gripper_left_qpos": (24, 26), "gripper_left_qvel": (26, 28),
    "arm_right_qpos": (28, 35), "arm_right_qvel": (35, 42), "eef_right_pos": (42, 45), "eef_right_quat": (45, 49),
    "gripper_right_qpos": (49, 51), "gripper_right_qvel": (51, 53), "trunk_qpos": (53, 57), "trunk_qvel": (57, 61),
}


def test_2026_layout_from_proprio_obs_matches_the_evaluators_table():
    assert R1PRO_2026.dim == 61 and tuple(R1PRO_2026.fields) == PROPRIO_OBS_2026
    assert {k: (s.start, s.stop) for k, s in R1PRO_2026.fields.items()} == EVAL_UTILS_2026


def test_detection_by_length():
    assert detect_layout(61) is R1PRO_2026 and detect_layout(256) is R1PRO_2025
    assert detect_layout(23) is None and detect_layout(60) is None


@pytest.mark.parametrize("layout", [R1PRO_2025, R1PRO_2026])
def test_state_cut_follows_the_action_layout(layout):
    raw = np.zeros((2, layout.dim), np.float32)
    f = layout.fields
    raw[:, f["base_qvel"]] = [1, 2, 3]
    raw[:, f["trunk_qpos"]] = [4, 5, 6, 7]
    raw[:, f["arm_left_qpos"]] = np.arange(10, 17)
    raw[:, f["gripper_left_qpos"]] = [0.01, 0.02]
    raw[:, f["arm_right_qpos"]] = np.arange(20, 27)
    raw[:, f["gripper_right_qpos"]] = [0.03, 0.04]
    s = layout.state(raw)
    assert s.shape == (2, 23) and s.dtype == np.float32
    np.testing.assert_allclose(s[0, :7], [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_allclose(s[0, 7:14], np.arange(10, 17))
    np.testing.assert_allclose(s[0, [14, 22]], [0.03, 0.07], rtol=1e-6)  # finger positions summed
    np.testing.assert_allclose(s[0, 15:22], np.arange(20, 27))
    b = layout.state(raw, order="b1k_baseline")
    np.testing.assert_allclose(b[0, 21:23], [0.03, 0.07], rtol=1e-6)
    with pytest.raises(ValueError, match="61|256"):
        layout.state(np.zeros(layout.dim + 1))


def test_2025_layout_agrees_with_the_service_cut():
    from xvla.core.embodiments.r1pro import r1pro_state_from_proprio

    raw = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    np.testing.assert_array_equal(R1PRO_2025.state(raw), r1pro_state_from_proprio(raw))
