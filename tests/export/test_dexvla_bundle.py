"""DexVLA bundles from ``xvla-export --preset tiny-dexvla``: the manifest contract (format 2, kind dexvla,
its policy block schema-valid), the runtime loads and serves it, and the parity gate refuses graphs that
disagree with the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # one export, ~1 min on 2 cores


@pytest.fixture(scope="module")
def preset_bundle(tmp_path_factory) -> Path:
    """``XVLA_DEXVLA_PRESET_BUNDLE=DIR`` reuses one."""
    if os.environ.get("XVLA_DEXVLA_PRESET_BUNDLE"):
        return Path(os.environ["XVLA_DEXVLA_PRESET_BUNDLE"])
    pytest.importorskip("torch")
    from xvla.export.cli import main

    out = tmp_path_factory.mktemp("dexvla_preset") / "bundle"
    assert main(["--preset", "tiny-dexvla", "-o", str(out), "--max-new-tokens", "6", "-q"]) == 0
    return out


def test_the_preset_bundle_is_a_format2_dexvla_manifest_the_runtime_validates(preset_bundle):
    from xvla.runtime.bundle import Bundle

    b = Bundle.load(preset_bundle)  # schemas (generic + policy_dexvla.json) and every file's sha256
    m = b.manifest
    assert m["policy_kind"] == "dexvla" and m["format_version"] == 2 and m["embodiment"] is None
    assert m["source"] == {"kind": "preset", "preset": "tiny-dexvla", "seed": 0}
    assert b.camera_names == ("cam_high", "cam_left_wrist", "cam_right_wrist") and b.proprio_dims == (14,)
    assert (b.dim, b.horizon, b.gripper_dims) == (14, 16, (6, 13)) and len(b.action_names) == 14
    assert sorted(b.graphs) == ["condition", "decode", "denoise", "prefill", "vision"]
    for g in b.graphs.values():  # batch-first everywhere: what the batcher concatenates
        assert all(t["shape"][0] == "batch" for t in g["inputs"] + g["outputs"])
    assert m["parity"]["passed"] and m["parity"]["outputs"]["tokens"]["passed"]
    assert m["parity"]["outputs"]["actions"]["max_abs"] <= 1e-4
    pol = b.policy
    assert pol["generation"]["max_new_tokens"] == 6
    assert pol["normalization"]["source"].startswith("identity")
    assert pol["tokenizer"]["source"].startswith("built")
    assert len(pol["diffusion"]["alphas_cumprod"]) == pol["diffusion"]["num_train_timesteps"]


def test_a_tampered_policy_block_is_refused_naming_the_field(preset_bundle, tmp_path):
    import shutil

    from xvla.core.manifest import BundleError
    from xvla.runtime.bundle import Bundle

    copy = tmp_path / "b"
    shutil.copytree(preset_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["policy"]["generation"]["max_new_tokens"] = 0
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest\.policy\.generation\.max_new_tokens"):
        Bundle.load(copy)


def test_the_preset_bundle_serves_a_chunk_with_reasoning_text(preset_bundle):
    from xvla.core.images import CameraInput
    from xvla.runtime.policies import load_policy
    from xvla.runtime.policies.base import ObservationInput, PlanContext, Timings

    pol = load_policy(preset_bundle, intra_op_threads=1)
    rng = np.random.default_rng(0)
    cams = {c: CameraInput(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for c in pol.spec.camera_names}
    t = Timings()
    chunk = pol.plan(pol.prepare(ObservationInput(cams, np.zeros(14, np.float32), "stack the cups"), t),
                     PlanContext(steps=3), t)
    assert chunk.actions.shape == (16, 14) and np.all(np.isfinite(chunk.actions))
    assert 1 <= len(chunk.aux["new_tokens"]) <= 6 and chunk.text == pol.decode_text(chunk.aux["new_tokens"])
    assert np.all(np.abs(chunk.actions) <= 1.0 + 1e-6)  # identity MIN_MAX stats: the clipped DDIM range
    pol.close()


def test_the_parity_gate_refuses_graphs_that_disagree_with_the_model(preset_bundle):
    import torch

    from xvla.export.policies.dexvla.bundle import chunk_parity, serving_graphs
    from xvla.export.policies.dexvla.presets import build_seeded

    model = build_seeded("tiny-dexvla", 0)
    with torch.no_grad():
        model.policy_head.final_layer.linear.weight.mul_(1.5)  # a head that is not the exported one
    specs = serving_graphs(model, (4, 6), 3)
    paths = {n: preset_bundle / f"{n}.onnx" for n in specs}
    rep = chunk_parity(model, specs, paths, (4, 6), 3, steps=3, max_new_tokens=3)
    assert not rep.passed and not rep.outputs["actions"]["passed"] and not rep.outputs["graph.denoise"]["passed"]
    assert rep.outputs["graph.vision"]["passed"] and rep.outputs["tokens"]["passed"]  # only the head differs
