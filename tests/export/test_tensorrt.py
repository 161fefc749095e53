"""TensorRT: engine building and its parity gate (GPU + TensorRT only), and the low-precision
graph rewrite for strongly typed networks (runs anywhere: it is plain ONNX)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from xvla.export.policies.xvla.onnx_export import ort_session
from xvla.export.policies.xvla.parity import ManifestGraph
from xvla.export.tensorrt_build import (
    ATTENTION_OPS,
    FP32_OPS,
    attention_score_matmuls,
    lower_precision_onnx,
    ops_without_type,
)


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def _feeds(bundle, graph, batch=2, seed=0):
    spec = ManifestGraph.from_manifest(json.loads((bundle / "manifest.json").read_text())["graphs"][graph])
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in spec.inputs:
        shape = s.concrete(batch)
        if s.dtype == "int64":
            feeds[s.name] = rng.integers(0, 20, size=shape)
        elif s.name == "t":
            feeds[s.name] = rng.uniform(0.1, 1.0, size=shape).astype(np.float32)
        else:
            feeds[s.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def test_fp16_graph_keeps_fp32_islands_and_io(tiny_cli_bundle, tmp_path):
    src = tiny_cli_bundle / "action.onnx"
    low = lower_precision_onnx(src, tmp_path / "action.fp16.onnx", "fp16", fp32_attention=True)
    model = onnx.load(str(low))
    onnx.checker.check_model(model)
    types = _types(model)
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert all(v.type.tensor_type.elem_type != F16 for v in list(model.graph.input) + list(model.graph.output))
    weights = [i for i in model.graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == F16 for i in weights)  # the matmul weights went to fp16
    islands = [n for n in model.graph.node if n.op_type in FP32_OPS + ATTENTION_OPS]
    assert any(n.op_type == "LayerNormalization" for n in islands) and any(n.op_type == "Softmax" for n in islands)
    for n in islands:
        assert all(types.get(i, F32) != F16 for i in n.input if i), f"{n.op_type} {n.name} gets fp16 input"
    scores = set(attention_score_matmuls(onnx.load(str(src))))
    assert len(scores) == 2  # one q.k^T per transformer block of the tiny head
    for n in model.graph.node:
        if n.name in scores:
            assert all(types.get(i, F32) == F32 for i in n.input), f"score matmul {n.name} is not fp32"
    # and it computes the same thing, to fp16 accuracy (ONNX Runtime's CPU kernels run fp16)
    feeds = _feeds(tiny_cli_bundle, "action")
    ref = ort_session(src).run(None, feeds)[0]
    got = ort_session(low).run(None, feeds)[0]
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 2e-2


def test_fp16_graph_leaves_attention_in_fp16_by_default(tiny_cli_bundle, tmp_path):
    """Issue 13 fix 2: q.k^T and Softmax pinned to fp32 rule out TensorRT's fused attention."""
    src = tiny_cli_bundle / "action.onnx"
    model = onnx.load(str(lower_precision_onnx(src, tmp_path / "action.fp16.onnx", "fp16")))
    onnx.checker.check_model(model)
    types = _types(model)
    F16 = onnx.TensorProto.FLOAT16
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types.get(n.input[0]) == F16 for n in softmax)
    scores = set(attention_score_matmuls(onnx.load(str(src))))
    assert scores and all(types.get(i) == F16 for n in model.graph.node if n.name in scores for i in n.input)
    assert all(types.get(n.input[0]) != F16 for n in model.graph.node if n.op_type == "LayerNormalization")
    feeds = _feeds(tiny_cli_bundle, "action")
    ref = ort_session(src).run(None, feeds)[0]
    assert np.abs(ort_session(tmp_path / "action.fp16.onnx").run(None, feeds)[0] - ref).max() < 2e-2


def test_bf16_graph_is_valid_onnx_with_unsupported_ops_left_fp32(tiny_cli_bundle, tmp_path):
    vlm = onnx.load(str(tiny_cli_bundle / "vlm.onnx"), load_external_data=False)
    assert "Conv" in ops_without_type(vlm, "tensor(bfloat16)")  # no bf16 Conv before opset 22
    assert "Conv" not in ops_without_type(vlm, "tensor(float16)")
    low = lower_precision_onnx(tiny_cli_bundle / "vlm.onnx", tmp_path / "vlm.bf16.onnx", "bf16")
    model = onnx.load(str(low))
    onnx.checker.check_model(model, full_check=True)  # every op's inputs have types its schema allows
    weights = [i for i in model.graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == onnx.TensorProto.BFLOAT16 for i in weights)
    assert all(v.type.tensor_type.elem_type != onnx.TensorProto.BFLOAT16 for v in model.graph.output)


def _require_trt_gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt-cu12 cuda-python)")
    from xvla.runtime.engines.tensorrt_engine import local_gpu_name

    if local_gpu_name() is None:
        pytest.skip("no NVIDIA GPU / cuda-python: TensorRT engines cannot be built here")
    return trt


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engines_pass_the_parity_gate(tmp_path, precision):
    trt = _require_trt_gpu()
    from tests.bundles import export_cache_dir
    from xvla.export.policies.xvla.bundle_writer import export_bundle, preset_model
    from xvla.runtime.bundle import Bundle

    out = export_bundle(preset_model("tiny", 0), tmp_path / f"trt-{precision}", trt=True, precision=precision,
                        max_batch=4, cache_dir=export_cache_dir())
    m = json.loads((out / "manifest.json").read_text())
    t = m["tensorrt"]
    assert t["version"] == trt.__version__ and t["gpu"] and t["precision"] == precision
    assert set(t["engines"]) == {"vlm", "action"}
    assert all((out / e["file"]).is_file() for e in t["engines"].values())
    assert t["parity"]["passed"] and t["parity"]["backend"] == "tensorrt"
    bundle = Bundle.load(out)
    bundle.check_tensorrt_compat(trt.__version__, t["gpu"])
