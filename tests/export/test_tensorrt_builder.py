"""The TensorRT builder against a recorded fake of TensorRT's Python API (no GPU, no TensorRT needed).

Issue 13 fixes 1-3: fp32 engines clear TF32 on the strongly typed path too; attention stays in low
precision (fused attention possible) unless asked; one optimisation profile per batch bucket.
"""

from __future__ import annotations

import pytest

from tests.support import fake_tensorrt
from xvla.export.tensorrt_build import build_engine
from xvla.runtime.engines.base import TensorSpec

INPUTS = [TensorSpec("x_t", "float32", ("batch", 30, 20)), TensorSpec("t", "float32", ("batch",))]


def _build(monkeypatch, tmp_path, version="10.9.0", **kw):
    rec = fake_tensorrt.install(monkeypatch, version)
    opts = dict(precision="fp32", max_batch=8)
    opts.update(kw)
    res = build_engine(tmp_path / "action.onnx", INPUTS, tmp_path / "engines" / "action.plan", **opts)
    (builder,) = rec.builders
    return res, builder


@pytest.mark.parametrize("version,strongly", [("10.9.0", True), ("11.0.0", None), ("10.9.0", False)])
def test_fp32_engines_clear_tf32_on_every_path(monkeypatch, tmp_path, version, strongly):
    _, builder = _build(monkeypatch, tmp_path, version, strongly_typed=strongly)
    cfg = builder.config
    assert fake_tensorrt.BuilderFlag.TF32 in cfg.cleared and fake_tensorrt.BuilderFlag.TF32 not in cfg.flags
    assert not {fake_tensorrt.BuilderFlag.FP16, fake_tensorrt.BuilderFlag.BF16} & cfg.flags
    is_strong = bool(builder.network.flags & (1 << int(fake_tensorrt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
    assert is_strong == (strongly is not False)


def _pinned(builder):
    return {layer.name for layer in builder.network.layers if layer.precision is fake_tensorrt.float32}


@pytest.mark.parametrize("precision,flag", [("fp16", "FP16"), ("bf16", "BF16")])
def test_low_precision_keeps_attention_fusable(monkeypatch, tmp_path, precision, flag):
    res, builder = _build(monkeypatch, tmp_path, strongly_typed=False, precision=precision)
    cfg = builder.config
    assert {fake_tensorrt.BuilderFlag[flag], fake_tensorrt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS} <= cfg.flags
    # norms and reductions stay fp32; q.k^T, softmax and .v stay low precision (TensorRT's fused attention)
    assert _pinned(builder) == {"ln", "mean"} and res.fp32_layers == 2
    norm = next(layer for layer in builder.network.layers if layer.name == "ln")
    assert norm.output_types == {0: fake_tensorrt.float32}


def test_fp32_attention_pins_scores_and_softmax(monkeypatch, tmp_path):
    _, builder = _build(monkeypatch, tmp_path, strongly_typed=False, precision="fp16", fp32_attention=True)
    assert _pinned(builder) == {"ln", "mean", "qk", "softmax"}  # not the projections, not .v


@pytest.mark.parametrize("max_batch,opt,expected", [
    (8, None, [(1, 1, 1), (2, 4, 4), (5, 8, 8)]),
    (32, 2, [(1, 1, 1), (2, 2, 4), (5, 8, 8), (9, 16, 16), (17, 32, 32)]),
    (1, None, [(1, 1, 1)]),
])
def test_one_profile_per_batch_bucket(monkeypatch, tmp_path, max_batch, opt, expected):
    res, builder = _build(monkeypatch, tmp_path, max_batch=max_batch, opt_batch=opt)
    profiles = builder.config.profiles
    assert [p.shapes["x_t"] for p in profiles] == [((lo, 30, 20), (o, 30, 20), (hi, 30, 20)) for lo, o, hi in expected]
    assert [p.shapes["t"] for p in profiles] == [((lo,), (o,), (hi,)) for lo, o, hi in expected]
    assert list(res.profiles) == expected
    assert (tmp_path / "engines" / "action.plan").read_bytes() == b"fake-plan"
