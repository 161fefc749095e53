"""The numpy flow-matching loop and postprocess against the official goldens (no model needed).

The goldens record every transformer call of ``generate_actions`` (its t and x_t_m) and the
outputs, so feeding the recorded outputs back as the "network" must reproduce the recorded
inputs and the final actions: this pins the loop's arithmetic to the official code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conformance.xvla_goldens import checkpoint_names, load_checkpoint_goldens, load_set, xvla_root
from xvla.core.flow_matching import flow_matching_chunk, postprocess_actions, time_grid


def _space(config: dict) -> dict:
    if config.get("action_mode", "ee6d") == "ee6d":
        return {"dim": 20, "sigmoid_dims": [9, 19], "idx_for_delta": []}
    return {"dim": int(config["real_action_dim"]), "sigmoid_dims": [],
            "idx_for_delta": list(config.get("idx_for_delta", []))}


def _golden_sets(conformance_dir):
    root = xvla_root(conformance_dir)
    names = checkpoint_names(root)
    if not names:
        pytest.skip(f"no X-VLA goldens under {conformance_dir}")
    return root, names


def test_time_grid_is_python_float_rounded_once():
    assert time_grid(3) == [np.float32(1.0), np.float32(2 / 3), np.float32(1 / 3)]
    assert all(t.dtype == np.float32 for t in time_grid(10))
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)


def test_loop_replays_the_official_calls(conformance_dir):
    root, names = _golden_sets(conformance_dir)
    inputs = load_set(root).inputs
    for name in names:
        g = load_checkpoint_goldens(root, name)
        config = json.loads((root / name / "config.json").read_text())
        space = _space(config)
        for steps in g.steps():
            dm = g.main[f"gen{steps}.step0.output"].shape[-1]
            x1 = inputs[f"noise_x1_{dm}"].numpy()
            calls = []

            def step(x_t, t):
                k = len(calls)
                calls.append((x_t.copy(), t.copy()))
                return g.main[f"gen{steps}.step{k}.output"].numpy()

            raw = flow_matching_chunk(step, x1, steps)
            assert len(calls) == steps
            for k, (x_t, t) in enumerate(calls):
                np.testing.assert_array_equal(t, g.main[f"gen{steps}.step{k}.t"].numpy())
                want = g.main[f"gen{steps}.step{k}.action_with_noise"].numpy()  # after preprocess
                keep = [i for i in range(dm) if i not in space["sigmoid_dims"]]  # ee6d zeroes the grippers
                np.testing.assert_allclose(x_t[..., keep], want[..., keep], rtol=0, atol=1e-6)
            if space["idx_for_delta"] and g.delta is not None:
                continue  # the main (2c4fedf) goldens ignore idx_for_delta; checked below
            actions = postprocess_actions(raw, inputs[f"proprio_{dm}"].numpy(), space)
            np.testing.assert_allclose(actions, g.main[f"gen{steps}.actions"].numpy(), rtol=0, atol=1e-6)


def test_delta_postprocess_matches_v2_per_sample_goldens(conformance_dir):
    root, names = _golden_sets(conformance_dir)
    inputs = load_set(root).inputs
    checked = 0
    for name in names:
        g = load_checkpoint_goldens(root, name)
        if g.delta is None:
            continue
        space = _space(json.loads((root / name / "config.json").read_text()))
        for steps in g.steps():
            raw = g.delta[f"gen{steps}.last_transformer_output_per_sample"].numpy()
            dm = raw.shape[-1]
            got = postprocess_actions(raw, inputs[f"proprio_{dm}"].numpy(), space)
            np.testing.assert_allclose(got, g.delta[f"gen{steps}.actions_v2_delta_per_sample"].numpy(),
                                       rtol=0, atol=1e-6)
            checked += 1
    if not checked:
        pytest.skip("no v2 delta goldens in this set")


def test_prefix_is_inpainted_at_every_step():
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((2, 6, 3), dtype=np.float32)
    prefix = rng.standard_normal((2, 4, 3), dtype=np.float32)
    seen = []

    def step(x_t, t):
        seen.append((x_t.copy(), t[0]))
        return np.full_like(x_t, 7.0)

    out = flow_matching_chunk(step, x1, 4, prefix=prefix, prefix_len=2)
    for x_t, t in seen:
        # the committed rows are the committed actions noised to level t, never the model's guess
        np.testing.assert_allclose(x_t[:, :2], x1[:, :2] * t + prefix[:, :2] * (1 - t), atol=1e-6)
    # the free rows follow the model's (constant) prediction after the first step
    np.testing.assert_allclose(seen[1][0][:, 2:], x1[:, 2:] * seen[1][1] + 7.0 * (1 - seen[1][1]), atol=1e-6)
    np.testing.assert_array_equal(out[:, :2], prefix[:, :2])
    np.testing.assert_array_equal(out[:, 2:], 7.0)


def test_bad_arguments_name_the_field():
    x1 = np.zeros((1, 4, 2), np.float32)
    with pytest.raises(ValueError, match="prefix"):
        flow_matching_chunk(lambda x, t: x, x1, 2, prefix=np.zeros((1, 1, 2), np.float32), prefix_len=2)
    with pytest.raises(ValueError, match="step_fn returned"):
        flow_matching_chunk(lambda x, t: x[:, :2], x1, 2)
    with pytest.raises(ValueError, match="proprio"):
        postprocess_actions(x1, None, {"dim": 2, "idx_for_delta": [1]})
    with pytest.raises(ValueError, match="sigmoid_dims"):
        postprocess_actions(x1, None, {"dim": 2, "sigmoid_dims": [5]})


def test_postprocess_is_per_sample_and_never_in_place():
    action = np.zeros((3, 5, 4), np.float32)
    proprio = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = postprocess_actions(action, proprio, {"dim": 3, "sigmoid_dims": [0], "idx_for_delta": [1, 2]})
    assert out.shape == (3, 5, 3)
    np.testing.assert_allclose(out[..., 0], 0.5)
    np.testing.assert_array_equal(out[:, :, 1], np.repeat(proprio[:, None, 1], 5, axis=1))
    assert not action.any()
