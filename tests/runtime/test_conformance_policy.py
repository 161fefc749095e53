"""Policy.generate_actions on bundles exported from the conformance checkpoints reproduces the official goldens.

Everything is read from the golden files (README §5): inputs.safetensors gives input_ids, images, masks,
domain ids, proprio and the injected x1 noise; tiny_ee6d is checked against goldens_2c4fedf
(sigmoid on the gripper dims), tiny_auto against goldens_v2_delta (idx_for_delta decode, per sample).
"""

from __future__ import annotations

import numpy as np
import pytest

from xvla.runtime.policy import Policy

pytestmark = pytest.mark.timeout(600)

CASES = {
    # model: (golden file, {steps: golden tensor}, action dim)
    "tiny_ee6d": ("goldens_2c4fedf.safetensors", {10: "gen10.actions", 3: "gen3.actions"}, 20),
    "tiny_auto": ("goldens_v2_delta.safetensors", {10: "gen10.actions_v2_delta_per_sample",
                                                   3: "gen3.actions_v2_delta_per_sample"}, 23),
}


@pytest.fixture(scope="module")
def conformance_bundles(conformance_dir, tmp_path_factory):
    from tests.bundles import make_checkpoint_bundle  # exported once per session, shared with other test folders

    from safetensors.numpy import load_file

    # the options tests/export/test_conformance_export.py exports with: same cache key, one export per session
    inputs = load_file(str(conformance_dir / "xvla" / "inputs.safetensors"))
    _, views, _, h, w = inputs["image_input"].shape
    opts = dict(num_views=int(views), image_size=(int(h), int(w)), max_text_len=int(inputs["input_ids"].shape[1]),
                parity_batch=int(inputs["input_ids"].shape[0]))
    root = tmp_path_factory.mktemp("conformance_bundles")
    return {name: make_checkpoint_bundle(root, conformance_dir / "xvla" / name, **opts) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_generate_actions_reproduces_goldens(name, conformance_dir, conformance_bundles):
    from safetensors.numpy import load_file

    golden_file, tensors, dim = CASES[name]
    inputs = load_file(str(conformance_dir / "xvla" / "inputs.safetensors"))
    goldens = load_file(str(conformance_dir / "xvla" / name / golden_file))
    policy = Policy.load(conformance_bundles[name])
    assert policy.dim == dim
    for steps, key in tensors.items():
        got = policy.generate_actions(
            inputs["input_ids"], inputs["image_input"], inputs["image_mask"], inputs["domain_id"],
            inputs[f"proprio_{dim}"], steps=steps, noise=inputs[f"noise_x1_{dim}"])
        want = goldens[key]
        assert got.shape == want.shape
        err = float(np.max(np.abs(got - want)))
        assert err <= 1e-4, f"{name} steps={steps}: max |diff| {err:.2e} vs {key}"
