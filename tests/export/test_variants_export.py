"""Geometry (DA3-XVLA) and v20 (task + skill prompts, skill heads) bundles: their extra graph I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.bundles import make_tiny_bundle
from xvla.core.manifest import validate_manifest
from xvla.export.policies.xvla.bundle_writer import preset_model
from xvla.export.policies.xvla.graphs import GraphOptions, build_graph_specs
from xvla.export.policies.xvla.onnx_export import ort_session
from xvla.export.policies.xvla.parity import ManifestGraph, OrtRunner, engine_chunk, parity_inputs, torch_chunk


def _io(m, graph):
    g = m["graphs"][graph]
    return [i["name"] for i in g["inputs"]], [o["name"] for o in g["outputs"]]


@pytest.fixture(scope="module")
def geo_bundle(export_root):
    from xvla.export.policies.xvla.model import XVLAConfig

    if "tiny-geo" not in XVLAConfig.preset_names():
        pytest.skip("the tiny-geo preset is not registered (geometry model not available)")
    from tests.bundles import export_cache_dir
    from xvla.export.cli import main

    out = export_root / "tiny-geo-cli"
    assert main(["--preset", "tiny-geo", "-o", str(out), "--cache-dir", str(export_cache_dir()), "-q"]) == 0
    return out


def test_tiny_geo_bundle_has_a_geometry_graph(geo_bundle):
    m = json.loads((geo_bundle / "manifest.json").read_text())
    validate_manifest(m)
    assert set(m["graphs"]) == {"vlm", "geometry", "action"}
    assert _io(m, "geometry") == (["image_input", "extrinsics", "intrinsics"], ["geometry_tokens"])
    ins = {i["name"]: i for i in m["graphs"]["geometry"]["inputs"]}
    assert ins["extrinsics"]["shape"] == ["batch", 3, 4, 4] and ins["intrinsics"]["shape"] == ["batch", 3, 3, 3]
    tokens = m["graphs"]["geometry"]["outputs"][0]["shape"]
    cfg = m["policy"]["model_config"]
    assert tokens == ["batch", cfg["geometry_conditioning"]["num_geometry_tokens"], cfg["hidden_size"]]
    assert _io(m, "action")[0][-1] == "geometry_tokens"
    assert m["policy"]["preprocess"]["geometry"] == {"process_res": 224, "intrinsics_scale": "per_axis",
                                                     "dataset_view_order": ["left_wrist", "right_wrist", "head"]}
    assert m["cameras"]["needs_pose"] is True
    p = m["parity"]
    assert p["passed"] and p["outputs"]["geometry_tokens"]["max_abs"] <= 1e-4
    assert p["outputs"]["actions"]["max_abs"] <= 1e-4


def test_geometry_graph_follows_the_poses(geo_bundle):
    """The poses are real inputs: other extrinsics give other tokens, as in PyTorch."""
    model = preset_model("tiny-geo", 0).model
    specs = build_graph_specs(model, GraphOptions())
    feeds = parity_inputs(model, specs, batch=1, seed=3)
    sess = ort_session(geo_bundle / "geometry.onnx")
    names = ("image_input", "extrinsics", "intrinsics")
    a = sess.run(None, {k: feeds[k] for k in names})[0]
    moved = dict(feeds)
    moved["extrinsics"] = feeds["extrinsics"].copy()
    moved["extrinsics"][:, :, :3, 3] += 0.3
    b = sess.run(None, {k: moved[k] for k in names})[0]
    with torch.no_grad():
        ref_b = model.compute_geometry_tokens(*(torch.from_numpy(moved[k]) for k in names)).numpy()
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_allclose(b, ref_b, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def v20_bundle(export_root):
    from xvla.export.policies.xvla.model import XVLAConfig

    if "tiny-r1pro-v20" not in XVLAConfig.preset_names():
        pytest.skip("the tiny-r1pro-v20 preset is not registered")
    return make_tiny_bundle(export_root, "tiny-r1pro-v20")


def test_v20_bundle_has_skill_heads_and_prompt_ids(v20_bundle):
    m = json.loads((v20_bundle / "manifest.json").read_text())
    validate_manifest(m)
    cfg = m["policy"]["model_config"]
    assert _io(m, "vlm")[1] == ["vlm_features", "aux_visual_inputs", "skill_logits", "progress"]
    assert _io(m, "action")[0] == ["x_t", "t", "proprio", "vlm_features", "aux_visual_inputs", "domain_id",
                                   "task_id", "skill_id"]
    outs = {o["name"]: o["shape"] for o in m["graphs"]["vlm"]["outputs"]}
    assert outs["skill_logits"] == outs["progress"] == ["batch", cfg["num_skills"]]
    assert [s["id"] for s in m["skills"]] == list(range(cfg["num_skills"]))
    assert [t["id"] for t in m["tasks"]] == list(range(cfg["num_tasks"]))
    a = m["policy"]["action_space"]
    assert (a["mode"], a["dim"], a["model_dim"]) == ("auto", 23, 23) and len(a["idx_for_delta"]) == 17
    assert m["policy"]["preprocess"]["proprio"] == {"dim": 23, "r1pro_raw_dim": 256}
    assert m["policy"]["domains"]["default"] == 19
    # the generic block carries the embodiment: R1Pro grippers are never blended, and the raw 256-d proprio is accepted
    assert m["embodiment"] == "r1pro" and m["action"]["gripper_dims"] == [14, 22] and m["proprio"]["dims"] == [23, 256]
    assert len(m["action"]["names"]) == 23 and m["action"]["names"][14] == "left_gripper"
    p = m["parity"]
    assert p["passed"] and {"skill_logits", "progress", "actions"} <= set(p["outputs"])


def test_v20_engines_select_task_and_skill_inside_the_graph(v20_bundle):
    """One engine serves every task and skill: changing only the ids changes the chunk, as in PyTorch."""
    model = preset_model("tiny-r1pro-v20", 0).model
    with torch.no_grad():  # the hubs are zero-initialised: give them content so the ids matter
        model.transformer.task_prompt_hub.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        model.transformer.skill_prompt_hub.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    from tests.bundles import export_cache_dir
    from xvla.export.policies.xvla.bundle_writer import export_bundle

    out = export_bundle(model, v20_bundle.parent / "v20-prompts", cache_dir=export_cache_dir())
    m = json.loads((out / "manifest.json").read_text())
    graphs = {k: ManifestGraph.from_manifest(v) for k, v in m["graphs"].items()}
    specs = build_graph_specs(model, GraphOptions())
    feeds = parity_inputs(model, specs, batch=2, seed=5)
    run = OrtRunner(out, graphs)
    base = engine_chunk(run, graphs, feeds, 4, m["policy"]["action_space"])["actions"]
    other = dict(feeds, skill_id=(feeds["skill_id"] + 1) % m["policy"]["model_config"]["num_skills"])
    moved = engine_chunk(run, graphs, other, 4, m["policy"]["action_space"])["actions"]
    ref = torch_chunk(model, other, 4)["actions"]
    assert np.abs(base - moved).max() > 1e-3
    np.testing.assert_allclose(moved, ref, rtol=0, atol=1e-4)
