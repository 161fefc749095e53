"""Exported conformance checkpoints reproduce the official goldens (whole chunk, golden noise).

Everything about the set is read from the files (tests/conformance/xvla_goldens.py), so the
same test runs on the held-out set: views, image size and text length come from
``inputs.safetensors``, widths from each checkpoint's config, step counts from the golden keys.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bundles import make_checkpoint_bundle
from tests.conformance.xvla_goldens import checkpoint_names, load_checkpoint_goldens, load_set, xvla_root
from tests.export.helpers import golden_export_options
from xvla.core.flow_matching import flow_matching_chunk, postprocess_actions
from xvla.export.policies.xvla.parity import ManifestGraph, OrtRunner

TOL = 1e-4


def _root(conformance_dir):
    root = xvla_root(conformance_dir)
    if not checkpoint_names(root):
        pytest.skip(f"no X-VLA conformance checkpoints under {conformance_dir}")
    return root


@pytest.fixture(scope="module")
def exported(conformance_dir, export_root):
    """{checkpoint name: bundle} for every conformance checkpoint, shaped like the golden inputs."""
    root = _root(conformance_dir)
    opts = golden_export_options(root)
    return root, {name: make_checkpoint_bundle(export_root, root / name, **opts) for name in checkpoint_names(root)}


def test_checkpoint_without_tokenizer_exports_without_one(exported):
    _, bundles = exported
    for name, bundle in bundles.items():
        m = json.loads((bundle / "manifest.json").read_text())
        assert m["policy"]["tokenizer"] is None and not (bundle / "tokenizer").exists()
        assert m["model_name"] == name and m["source"]["kind"] == "checkpoint"
        assert m["parity"]["passed"]


def test_engines_reproduce_the_goldens(exported):
    root, bundles = exported
    inputs = {k: v.numpy() for k, v in load_set(root).inputs.items()}
    for name, bundle in bundles.items():
        g = load_checkpoint_goldens(root, name)
        m = json.loads((bundle / "manifest.json").read_text())
        graphs = {k: ManifestGraph.from_manifest(v) for k, v in m["graphs"].items()}
        run = OrtRunner(bundle, graphs)
        space = m["policy"]["action_space"]
        dm = space["model_dim"]

        vlm = run("vlm", {k: inputs[k] for k in ("image_input", "image_mask", "input_ids")})
        for key in ("vlm_features", "aux_visual_inputs"):
            err = np.abs(vlm[key] - g.main[f"forward_vlm.{key}"].numpy()).max()
            assert err <= TOL, f"{name}: {key} max abs {err:.2e}"

        fixed = {"proprio": inputs[f"proprio_{dm}"], "domain_id": inputs["domain_id"],
                 "vlm_features": vlm["vlm_features"], "aux_visual_inputs": vlm["aux_visual_inputs"]}
        for steps in g.steps():
            raw = flow_matching_chunk(lambda x_t, t: run("action", {**fixed, "x_t": x_t, "t": t})["action"],
                                      inputs[f"noise_x1_{dm}"], steps)
            err = np.abs(raw - g.main[f"gen{steps}.step{steps - 1}.output"].numpy()).max()
            assert err <= TOL, f"{name}: gen{steps} last transformer output max abs {err:.2e}"
            actions = postprocess_actions(raw, fixed["proprio"], space)
            if space["idx_for_delta"]:
                # the main goldens come from code that ignores idx_for_delta; v2 applies it (per sample)
                assert g.delta is not None, f"{name}: idx_for_delta set but no v2 delta goldens"
                want = g.delta[f"gen{steps}.actions_v2_delta_per_sample"].numpy()
            else:
                want = g.main[f"gen{steps}.actions"].numpy()
            err = np.abs(actions - want).max()
            assert actions.shape == want.shape and err <= TOL, f"{name}: gen{steps}.actions max abs {err:.2e}"
