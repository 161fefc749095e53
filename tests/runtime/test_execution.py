"""ActionPlan against hand-computed cases: ensembling, grippers, latency compensation, receding horizon, RTC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xvla.core.flow_matching import unpostprocess_actions
from xvla.runtime.execution import ActionPlan, ExecutionConfig, ExecutionMode, SkillChange, act_weights

T, D = 4, 2


def chunk(base: float) -> np.ndarray:
    """actions[j] = [base + j, 10*base + j]: every value identifies its chunk and step."""
    return np.array([[base + j, 10 * base + j] for j in range(T)], np.float32)


def test_act_weights_oldest_first():
    w = act_weights(3, 0.5)
    e = [1.0, math.exp(-0.5), math.exp(-1.0)]
    assert w == pytest.approx([x / sum(e) for x in e])
    assert act_weights(2, 0.0) == pytest.approx([0.5, 0.5])


def test_temporal_ensemble_two_chunks_hand_computed():
    plan = ActionPlan(ExecutionConfig(ensemble_k=0.5, replan_threshold=0), T, D)
    plan.add_chunk(chunk(0), obs_frame=0, current_frame=0)
    plan.add_chunk(chunk(100), obs_frame=2, current_frame=2)
    action, newest = plan.action_at(2)
    # frame 2: old chunk's step 2 = [2, 2], new chunk's step 0 = [100, 1000]; weights 1 and e^-0.5 (old first)
    w_old, w_new = 1 / (1 + math.exp(-0.5)), math.exp(-0.5) / (1 + math.exp(-0.5))
    assert action == pytest.approx([w_old * 2 + w_new * 100, w_old * 2 + w_new * 1000], rel=1e-6)
    assert newest.chunk_id == 1
    # frame 3: old step 3 = [3, 3], new step 1 = [101, 1001]
    assert plan.action_at(3)[0] == pytest.approx([w_old * 3 + w_new * 101, w_old * 3 + w_new * 1001], rel=1e-6)
    # frame 4: the old chunk has ended, only the new one (step 2) remains
    assert plan.action_at(4)[0] == pytest.approx([102, 1002])
    assert plan.action_at(6) is None  # new chunk covers frames 2..5


def test_three_chunks_and_newest_wins_gripper_dim():
    plan = ActionPlan(ExecutionConfig(ensemble_k=1.0, newest_wins_dims=(1,), replan_threshold=0), T, D)
    for i, start in enumerate((0, 1, 2)):
        plan.add_chunk(chunk(10 * (i + 1)), obs_frame=start, current_frame=start)
    action, newest = plan.action_at(2)
    # steps at frame 2: chunk A (10) step 2 -> 12, B (20) step 1 -> 21, C (30) step 0 -> 30
    e = np.array([1.0, math.exp(-1.0), math.exp(-2.0)])
    w = e / e.sum()
    assert action[0] == pytest.approx(w @ [12, 21, 30], rel=1e-6)
    assert action[1] == pytest.approx(300.0)  # gripper dim: newest chunk (C, 10*30 + 0), never blended
    assert newest.chunk_id == 2


def test_latency_compensation_drops_passed_frames():
    plan = ActionPlan(ExecutionConfig(replan_threshold=0), 8, D)
    a = np.stack([np.full(D, j, np.float32) for j in range(8)])
    c = plan.add_chunk(a, obs_frame=10, current_frame=14)  # planned at frame 10, arrived at 14
    assert c.start_frame == 10 and plan.dropped_stale_actions == 4
    assert plan.action_at(13) is None  # already passed: never executed
    assert plan.action_at(14)[0] == pytest.approx([4, 4])  # the action meant for frame 14
    assert plan.depth_after(14) == 3  # frames 15, 16, 17


def test_without_latency_compensation_chunk_starts_on_arrival():
    plan = ActionPlan(ExecutionConfig(replan_threshold=0, latency_compensation=False), 8, D)
    a = np.stack([np.full(D, j, np.float32) for j in range(8)])
    c = plan.add_chunk(a, obs_frame=10, current_frame=14)
    assert c.start_frame == 14 and plan.dropped_stale_actions == 0
    assert plan.action_at(14)[0] == pytest.approx([0, 0])
    assert plan.action_at(21)[0] == pytest.approx([7, 7])


def test_receding_horizon_executes_first_n_then_next_chunk():
    plan = ActionPlan(ExecutionConfig(mode=ExecutionMode.RECEDING_HORIZON, execute_horizon=2, replan_threshold=1), T, D)
    plan.add_chunk(chunk(0), obs_frame=0, current_frame=0)
    assert plan.action_at(0)[0] == pytest.approx([0, 0])
    assert plan.action_at(1)[0] == pytest.approx([1, 1])
    assert plan.action_at(2) is None  # steps 2, 3 are never executed in receding-horizon mode
    assert plan.needs_replan(1) and not plan.needs_replan(0)
    plan.add_chunk(chunk(50), obs_frame=1, current_frame=2)
    # the new chunk replaces the old one entirely (no blending): frame 2 = its step 1
    assert plan.action_at(2)[0] == pytest.approx([51, 501])
    assert plan.action_at(1) is None  # the old chunk is gone; frame 1 was answered before
    assert len(plan.chunks) == 1


def test_skill_change_flush_vs_blend():
    for policy, expect_chunks in ((SkillChange.FLUSH, 1), (SkillChange.BLEND, 2)):
        plan = ActionPlan(ExecutionConfig(on_skill_change=policy, ensemble_k=0.0, replan_threshold=0), T, D)
        plan.add_chunk(chunk(0), obs_frame=0, current_frame=0, skill_id=3)
        plan.add_chunk(chunk(100), obs_frame=1, current_frame=1, skill_id=5)
        assert len(plan.chunks) == expect_chunks
        got = plan.action_at(1)[0]
        if policy is SkillChange.FLUSH:
            assert got == pytest.approx([100, 1000])
        else:
            assert got == pytest.approx([(1 + 100) / 2, (1 + 1000) / 2])  # k = 0: plain mean


def test_same_skill_never_flushes():
    plan = ActionPlan(ExecutionConfig(on_skill_change=SkillChange.FLUSH, replan_threshold=0), T, D)
    plan.add_chunk(chunk(0), obs_frame=0, current_frame=0, skill_id=3)
    plan.add_chunk(chunk(100), obs_frame=1, current_frame=1, skill_id=3)
    assert len(plan.chunks) == 2


def test_committed_prefix_and_rtc_delay():
    plan = ActionPlan(ExecutionConfig(mode=ExecutionMode.RTC, replan_threshold=2), T, D)
    plan.add_chunk(chunk(0), obs_frame=0, current_frame=0)
    pre = plan.committed(2, 5)  # only frames 2, 3 exist
    assert pre.shape == (2, D) and pre == pytest.approx(chunk(0)[2:])
    # 50 ms at 30 Hz -> 2 frames, + 1 margin = 3; capped at T - 1
    assert plan.rtc_delay_frames(0.05, 30.0) == 3
    assert plan.rtc_delay_frames(5.0, 30.0) == T - 1
    fixed = ActionPlan(ExecutionConfig(mode=ExecutionMode.RTC, rtc_delay_frames=2, replan_threshold=0), T, D)
    assert fixed.rtc_delay_frames(5.0, 30.0) == 2


def test_unpostprocess_inverts_sigmoid_and_delta():
    space = {"dim": 3, "model_dim": 4, "idx_for_delta": [0], "sigmoid_dims": [1]}
    actions = np.array([[[5.0, 0.5, 7.0], [2.0, 1 / (1 + math.exp(-2.0)), -1.0]]], np.float32)  # [1, 2, 3]
    proprio = np.array([[2.0, 9.0, 9.0]], np.float32)
    raw = unpostprocess_actions(actions, proprio, space)
    assert raw.shape == (1, 2, 4)
    assert raw[0, 0] == pytest.approx([3.0, 0.0, 7.0, 0.0], abs=1e-5)  # 5 - 2, logit(0.5) = 0, pad dim = 0
    assert raw[0, 1] == pytest.approx([0.0, 2.0, -1.0, 0.0], abs=1e-4)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="execution.execute_horizon"):
        ActionPlan(ExecutionConfig(execute_horizon=T + 1), T, D)
    with pytest.raises(ValueError, match="execution.newest_wins_dims"):
        ActionPlan(ExecutionConfig(newest_wins_dims=(D,)), T, D)
    with pytest.raises(ValueError, match="execution.ensemble_k"):
        ActionPlan(ExecutionConfig(ensemble_k=float("nan")), T, D)
