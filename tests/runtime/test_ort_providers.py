"""ONNX Runtime provider chains, TensorRT profile shapes, activation checks, IO binding, thread policy
(issue 13 fix 5 and the CPU thread policy). The GPU providers are checked against a recorded fake
InferenceSession; IO binding runs on the real CPU provider."""

from __future__ import annotations

import numpy as np
import pytest

from xvla.runtime.engines import ProviderUnavailableError
from xvla.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine, expand_providers, thread_policy

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


class _IO:
    def __init__(self, name, shape):
        self.name, self.type, self.shape = name, "tensor(float)", shape


class FakeSession:
    created: list = []
    active: list | None = None  # what get_providers answers; None: everything asked

    def __init__(self, path, sess_options=None, providers=()):
        self.providers = list(providers)
        self.options = sess_options
        FakeSession.created.append(self)

    def get_providers(self):
        return list(FakeSession.active) if FakeSession.active is not None else [p for p, _ in self.providers]

    def get_inputs(self):
        return [_IO("x_t", ["batch", 30, 20]), _IO("t", ["batch"])]

    def get_outputs(self):
        return [_IO("action", ["batch", 30, 20])]


@pytest.fixture
def fake_ort(monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    FakeSession.created, FakeSession.active = [], None
    path = tmp_path / "action.onnx"
    path.write_bytes(b"")
    return path


SHAPES = {"x_t": ["batch", 30, 20], "t": ["batch"]}


def test_chains():
    assert expand_providers([TRT]) == [TRT, CUDA, CPU]
    assert expand_providers([TRT, CPU]) == [TRT, CUDA, CPU]
    assert expand_providers([CUDA]) == [CUDA, CPU]
    assert expand_providers([CPU]) == [CPU]


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_tensorrt_gets_cuda_behind_it_profiles_and_precision(fake_ort, tmp_path, precision):
    eng = OnnxRuntimeEngine(fake_ort, "action", providers=["tensorrt"], max_batch=8, precision=precision,
                            trt_cache_dir=tmp_path / "cache", input_shapes=SHAPES)
    (sess,) = FakeSession.created
    assert [p for p, _ in sess.providers] == [TRT, CUDA, CPU]
    opts = sess.providers[0][1]
    assert opts["trt_fp16_enable"] is (precision == "fp16") and opts["trt_bf16_enable"] is (precision == "bf16")
    # one profile per batch bucket (1, 2-4, 5-8): the engine is never rebuilt mid-serving
    assert opts["trt_profile_min_shapes"] == "x_t:1x30x20,t:1,x_t:2x30x20,t:2,x_t:5x30x20,t:5"
    assert opts["trt_profile_opt_shapes"] == "x_t:1x30x20,t:1,x_t:4x30x20,t:4,x_t:8x30x20,t:8"
    assert opts["trt_profile_max_shapes"] == "x_t:1x30x20,t:1,x_t:4x30x20,t:4,x_t:8x30x20,t:8"
    assert eng.batch_limit == 8 and eng.info.provider == TRT and eng.thread_policy.intra_op_threads == 1


def test_every_requested_provider_must_be_active(fake_ort):
    FakeSession.active = [TRT, CPU]  # TensorRT came up, CUDA did not: rejected nodes would run on the CPU
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        OnnxRuntimeEngine(fake_ort, "action", providers=["tensorrt"], input_shapes=SHAPES)
    OnnxRuntimeEngine(fake_ort, "action", providers=["tensorrt"], input_shapes=SHAPES, allow_fallback=True)


def test_thread_policy_per_machine(monkeypatch):
    monkeypatch.delenv("XVLA_ORT_SPIN", raising=False)
    assert (thread_policy(CPU, cores=2).intra_op_threads, thread_policy(CPU, cores=2).spin) == (2, False)
    assert (thread_policy(CPU, cores=16).intra_op_threads, thread_policy(CPU, cores=16).spin) == (15, True)
    assert thread_policy(CPU, intra_op_threads=3, cores=16).intra_op_threads == 3
    assert thread_policy(CUDA, cores=16).intra_op_threads == 1
    monkeypatch.setenv("XVLA_ORT_SPIN", "0")
    assert thread_policy(CPU, cores=16).spin is False


@pytest.fixture(scope="module")
def mad_onnx(tmp_path_factory):
    """y = x * w + c, all [batch, 3]."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("x", "w", "c", "y")]
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "c"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "mad", io[:3], io[3:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "mad.onnx"
    onnx.save(model, str(path))
    return path


def test_io_binding_keeps_static_inputs_bound(mad_onnx):
    import onnxruntime as ort

    eng = OnnxRuntimeEngine(mad_onnx, "action", providers=["cpu"], intra_op_threads=1)
    plain = eng.bind_static({"w": np.ones((2, 3), np.float32)})
    assert plain.backing is None  # CPU: host arrays, session.run (IO binding only pays off on a GPU)
    eng.io_binding_on_cpu = True  # the GPU path's code, on the CPU provider
    rng = np.random.default_rng(0)
    w, c = rng.standard_normal((2, 3), dtype=np.float32), rng.standard_normal((2, 3), dtype=np.float32)
    static = eng.bind_static({"w": w, "c": c.astype(np.float64)})  # cast once, here
    assert all(isinstance(v, ort.OrtValue) for v in static.backing.values())
    for step in range(3):
        x = np.full((2, 3), float(step), np.float32)
        got = eng.run_bound(static, {"x": x})["y"]
        np.testing.assert_allclose(got, eng.run({"x": x, "w": w, "c": c})["y"], rtol=1e-6)
        np.testing.assert_allclose(got, x * w + c, rtol=1e-6)


def test_small_graphs_probe_one_thread_against_the_pool(mad_onnx, monkeypatch):
    """The thread count of a small graph is measured at load on this machine, not assumed."""
    from xvla.runtime.engines import onnxruntime_engine as oe

    monkeypatch.delenv("XVLA_ORT_SPIN", raising=False)
    monkeypatch.setattr(oe, "usable_cores", lambda: 2)
    eng = OnnxRuntimeEngine(mad_onnx, "action", providers=["cpu"])
    assert eng.thread_policy.reason.startswith("probed") or "probed" in eng.thread_policy.reason
    assert eng.thread_policy.intra_op_threads in (1, 2)
    assert eng.info.extra["intra_op_threads"] == str(eng.thread_policy.intra_op_threads)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(eng.run({"x": x, "w": x, "c": x})["y"], 2 * x)
    # big graphs and explicit --threads are not probed
    assert not thread_policy(CPU, cores=2, graph_bytes=10 * 2**30).probe
    assert thread_policy(CPU, intra_op_threads=2, cores=2, graph_bytes=1).probe is False
