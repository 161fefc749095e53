"""Engines: providers by flag, no silent CPU fallback, clear errors; native TensorRT import message."""

from __future__ import annotations

import numpy as np
import pytest

from xvla.runtime.engines import EngineError, ProviderUnavailableError, parse_providers
from xvla.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine


@pytest.fixture(scope="module")
def add_onnx(tmp_path_factory):
    """y = a + b with a dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "add.onnx"
    onnx.save(model, str(path))
    return path


def test_cpu_engine_runs_and_describes(add_onnx):
    eng = OnnxRuntimeEngine(add_onnx, "vlm", providers=["cpu"], max_batch=4)
    out = eng.run({"a": np.ones((2, 3), np.float32), "b": np.full((2, 3), 2.0, np.float32)})
    assert out["y"] == pytest.approx(np.full((2, 3), 3.0))
    assert eng.info.provider == "CPUExecutionProvider" and eng.info.max_batch == 4
    assert eng.input_names == ["a", "b"] and eng.inputs[0].dtype == "float32"
    with pytest.raises(EngineError, match=r"missing input\(s\) \['b'\]"):
        eng.run({"a": np.ones((1, 3), np.float32)})


def test_unavailable_provider_is_a_startup_error(add_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider.*allow_fallback"):
        OnnxRuntimeEngine(add_onnx, "vlm", providers=["cuda"])
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        OnnxRuntimeEngine(add_onnx, "vlm", providers=["tensorrt", "cuda"])


def test_fallback_only_when_asked(add_onnx, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    eng = OnnxRuntimeEngine(add_onnx, "vlm", providers=["cuda", "cpu"], allow_fallback=True)
    assert eng.info.provider == "CPUExecutionProvider"
    assert any("fell back" in r.getMessage() for r in caplog.records)


def test_provider_flags():
    assert parse_providers("cuda,cpu") == ["cuda", "cpu"]
    assert parse_providers(None) == ["cpu"]
    with pytest.raises(EngineError, match="unknown"):
        parse_providers("gpu")
    with pytest.raises(EngineError, match="trt-native"):
        parse_providers("trt-native,cpu")


def test_native_tensorrt_missing_says_what_to_install(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    from xvla.runtime.engines.tensorrt_engine import TensorRTEngine

    with pytest.raises(ProviderUnavailableError, match="pip install tensorrt"):
        TensorRTEngine(tmp_path / "vlm.plan", "vlm")
