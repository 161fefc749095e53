"""Policy.generate_actions on bundles exported from the conformance checkpoints reproduces the official goldens.

Everything is read from the golden files (README §5): inputs.safetensors gives input_ids, images, masks,
domain ids, proprio and the injected x1 noise; every ``tiny_*`` checkpoint is found in the folder
(``$XVLA_CONFORMANCE_DIR``), widths come from its bundle, step counts from the golden keys; a checkpoint
with ``idx_for_delta`` is checked against goldens_v2_delta (per-sample decode), others against the main goldens.
"""

from __future__ import annotations

import numpy as np
import pytest

from xvla.runtime import Policy

pytestmark = pytest.mark.timeout(600)

def _set(conformance_dir):
    """The golden folder and its checkpoints, discovered from the files (held-out sets have other names/sizes)."""
    from tests.conformance.xvla_goldens import checkpoint_names, xvla_root

    root = xvla_root(conformance_dir)
    names = checkpoint_names(root)
    if not names:
        pytest.skip(f"no X-VLA conformance checkpoints under {conformance_dir}")
    return root, names


@pytest.fixture(scope="module")
def conformance_bundles(conformance_dir, tmp_path_factory):
    from tests.bundles import make_checkpoint_bundle  # exported once per session, shared with other test folders
    from tests.export.helpers import golden_export_options

    root, names = _set(conformance_dir)
    # the options tests/export/test_conformance_export.py exports with: same cache key, one export per session
    opts = golden_export_options(root)
    out = tmp_path_factory.mktemp("conformance_bundles")
    return root, {name: make_checkpoint_bundle(out, root / name, **opts) for name in names}


def test_generate_actions_reproduces_goldens(conformance_bundles):
    from tests.conformance.xvla_goldens import load_checkpoint_goldens, load_set

    root, bundles = conformance_bundles
    inputs = {k: v.numpy() for k, v in load_set(root).inputs.items()}
    for name, bundle in bundles.items():
        g = load_checkpoint_goldens(root, name)
        policy = Policy.load(bundle)
        space = policy.space
        dm = space["model_dim"]
        for steps in g.steps():
            got = policy.generate_actions(
                inputs["input_ids"], inputs["image_input"], inputs["image_mask"], inputs["domain_id"],
                inputs[f"proprio_{dm}"], steps=steps, noise=inputs[f"noise_x1_{dm}"])
            if space["idx_for_delta"]:  # main goldens ignore idx_for_delta; the v2 ones apply it per sample
                assert g.delta is not None, f"{name}: idx_for_delta set but no v2 delta goldens"
                key, want = f"gen{steps}.actions_v2_delta_per_sample", g.delta[f"gen{steps}.actions_v2_delta_per_sample"]
            else:
                key, want = f"gen{steps}.actions", g.main[f"gen{steps}.actions"]
            want = want.numpy()
            assert got.shape == want.shape, f"{name}: {got.shape} vs {key} {want.shape}"
            err = float(np.max(np.abs(got - want)))
            assert err <= 1e-4, f"{name} steps={steps}: max |diff| {err:.2e} vs {key}"
