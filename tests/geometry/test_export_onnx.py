"""The geometry encoder (DA3 inline encoder + conditioner) traces with torch.export and runs in
ONNX Runtime like PyTorch: 3 views at 224, dynamic batch.

Uses the conformance-size model with the golden weights when the DA3 set is present (so the
ONNX graph is also checked against the official geometry tokens), random weights otherwise.
One export serves all checks (it dominates this file's runtime).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import conformance_root
from xvla.export.policies.xvla.model.geometry import GeometryConfig, GeometryEncoder

ort = pytest.importorskip("onnxruntime")

NAMES = ("image_input", "extrinsics", "intrinsics")


def _inputs(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 3, 3, 224, 224, generator=g)
    q, _ = torch.linalg.qr(torch.randn(b, 3, 3, 3, generator=g))
    e = torch.eye(4).repeat(b, 3, 1, 1)
    e[..., :3, :3] = q * torch.linalg.det(q)[..., None, None]  # proper rotations
    e[..., :3, 3] = torch.randn(b, 3, 3, generator=g)
    k = torch.tensor([[95.2, 0, 112], [0, 95.2, 112], [0, 0, 1]]).repeat(b, 3, 1, 1)
    k[:, 1:, 0, 0] = k[:, 1:, 1, 1] = 181.4
    return img, e, k


@pytest.fixture(scope="module")
def model_and_gold():
    from tests.conformance.da3_goldens import build_encoder, da3_root, load_set

    root = da3_root(conformance_root()) if conformance_root().is_dir() else None
    if root is not None:
        s = load_set(root)
        return build_encoder(s), s
    torch.manual_seed(0)
    return GeometryEncoder.from_config(GeometryConfig.preset("tiny")).eval(), None


@pytest.fixture(scope="module")
def exported(model_and_gold, tmp_path_factory):
    enc, _ = model_and_gold
    batch = torch.export.Dim("batch", min=1, max=64)
    dyn = ({0: batch}, {0: batch}, {0: batch})
    ep = torch.export.export(enc, _inputs(2, 0), dynamic_shapes=dyn)
    path = tmp_path_factory.mktemp("geometry") / "geometry.onnx"
    torch.onnx.export(ep, _inputs(2, 0), str(path), dynamo=True, input_names=list(NAMES),
                      output_names=["geometry_tokens"], optimize=False, verbose=False)
    return ep, path


def test_torch_export_graph_has_dynamic_batch_and_matches(model_and_gold, exported):
    enc, _ = model_and_gold
    ep, _ = exported
    assert [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"] == list(NAMES)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    # no boolean-mask gathers / scatters and no tensor -> Python scalar reads on the path
    forbidden = ("aten.nonzero", "aten.masked_select", "aten.index_put", "aten.index.Tensor",
                 "aten._local_scalar_dense", "aten.item")
    assert not [t for t in targets if t.startswith(forbidden)]
    x = _inputs(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*x), enc(*x), atol=1e-5, rtol=1e-5)


def test_onnxruntime_matches_pytorch(model_and_gold, exported):
    enc, gold = model_and_gold
    _, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(NAMES)
    feeds = [_inputs(1, 2), _inputs(4, 3)]
    if gold is not None:
        i = gold.inputs
        feeds.append((i["image_input"], i["extrinsics"], i["intrinsics"]))
    for x in feeds:
        with torch.no_grad():
            ref = enc(*x).numpy()
        out = sess.run(None, {n: t.numpy() for n, t in zip(NAMES, x)})[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    if gold is not None:  # ... and the official tokens
        np.testing.assert_allclose(out, gold.geometry_outputs["geometry_tokens"].numpy(), atol=1e-4, rtol=1e-4)
