"""The graph wrappers in PyTorch (no export): what the exported graphs compute, checked cheaply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xvla.core.flow_matching import flow_matching_chunk, postprocess_actions
from xvla.export.policies.xvla.bundle_writer import preset_model
from xvla.export.policies.xvla.graphs import GraphOptions, build_graph_specs, traced_parts
from xvla.export.policies.xvla.parity import parity_inputs, torch_chunk


@pytest.fixture(scope="module")
def tiny():
    model = preset_model("tiny", 0).model
    return model, build_graph_specs(model, GraphOptions(chunk_steps=3))


def _step_fn(spec, feeds):
    def step(x_t, t):
        args = {**feeds, "x_t": x_t, "t": t}
        with torch.no_grad():
            return spec.module(*[torch.from_numpy(np.asarray(args[n])) for n in spec.input_names]).numpy()
    return step


def test_action_graph_in_the_numpy_loop_is_generate_actions(tiny):
    model, specs = tiny
    feeds = parity_inputs(model, specs, batch=2, seed=1)
    ref = torch_chunk(model, feeds, 3)
    cond = {"proprio": feeds["proprio"], "domain_id": feeds["domain_id"], "vlm_features": ref["vlm_features"],
            "aux_visual_inputs": ref["aux_visual_inputs"]}
    raw = flow_matching_chunk(_step_fn(specs["action"], cond), feeds["noise"], 3)
    got = postprocess_actions(raw, feeds["proprio"], model.action_space.describe())
    np.testing.assert_allclose(got, ref["actions"], rtol=0, atol=1e-5)


def test_unrolled_chunk_graph_equals_the_loop(tiny):
    model, specs = tiny
    feeds = parity_inputs(model, specs, batch=2, seed=2)
    ref = torch_chunk(model, feeds, 3)
    cond = {"proprio": feeds["proprio"], "domain_id": feeds["domain_id"], "vlm_features": ref["vlm_features"],
            "aux_visual_inputs": ref["aux_visual_inputs"]}
    chunk = specs["chunk"]
    assert chunk.input_names == ["x1", "proprio", "vlm_features", "aux_visual_inputs", "domain_id"]
    args = {**cond, "x1": feeds["noise"]}
    with torch.no_grad():
        raw_c = chunk.module(*[torch.from_numpy(np.asarray(args[n])) for n in chunk.input_names]).numpy()
    raw_l = flow_matching_chunk(_step_fn(specs["action"], cond), feeds["noise"], 3)
    np.testing.assert_allclose(raw_c, raw_l, rtol=0, atol=1e-6)


def test_v20_vlm_is_traced_as_encoder_plus_heads():
    model = preset_model("tiny-r1pro-v20", 0).model
    specs = build_graph_specs(model, GraphOptions())
    vlm = specs["vlm"]
    assert [p.name for p in vlm.parts] == ["vlm", "skill_heads"]
    assert vlm.output_names == ["vlm_features", "aux_visual_inputs", "skill_logits", "progress"]
    assert set(traced_parts(specs)) == {"vlm", "skill_heads", "action"}
    # the parts compose to the whole
    feeds = vlm.example_inputs(batch=2, seed=4)
    with torch.no_grad():
        whole = vlm.module(*[torch.from_numpy(feeds[n]) for n in vlm.input_names])
        enc = vlm.parts[0].module(*[torch.from_numpy(feeds[n]) for n in vlm.input_names])
        heads = vlm.parts[1].module(enc[0])
    for a, b in zip(whole, enc + heads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
