"""The torch engines (``--providers torch-cpu``): the bundle's source model behind the runtime's Engine
interface, the same chunk as the ONNX engines, parity reported and gated. The CUDA-graph path needs a GPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xvla.runtime import Policy
from xvla.runtime.engines import EngineError
from xvla.runtime.engines.factory import parse_providers
from xvla.runtime.policies.xvla.torch_engine import TorchOptions


def test_flags():
    assert parse_providers("torch-cuda") == ["torch-cuda"]
    assert TorchOptions.from_flag("torch-cuda") == TorchOptions("cuda", "bf16", True)
    assert TorchOptions.from_flag("torch-cpu").precision == "fp32"
    assert TorchOptions.from_flag("torch-cpu-bf16") == TorchOptions("cpu", "bf16", False)
    with pytest.raises(EngineError, match="cannot be combined"):
        parse_providers("torch-cpu,cpu")


def test_serving_path_does_not_import_torch(tiny_bundle):
    # (xvla.export.policies.xvla.model.pose is still imported by runtime/preprocess.py today: issue 10 moves it to core)
    code = ("import sys; from xvla.runtime import Policy; import xvla.runtime.server, xvla.runtime.service; "
            f"Policy.load({str(tiny_bundle)!r}, verify=False); "
            "bad = [m for m in ('torch', 'xvla.runtime.policies.xvla.torch_engine') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture(scope="module")
def policies(tiny_bundle):
    onnx = Policy.load(tiny_bundle, providers=["cpu"], verify=False, seed=0)
    torch_cpu = Policy.load(tiny_bundle, providers=["torch-cpu"], verify=False, seed=0)
    yield onnx, torch_cpu
    onnx.close()
    torch_cpu.close()


def _inputs(pol, b=2):
    rng = np.random.default_rng(1)
    v, (h, w) = pol.images.num_views, pol.images.size
    f = dict(input_ids=rng.integers(4, 40, size=(b, int(pol.preprocess_spec.get("max_text_len", 50)))),
             image_input=rng.standard_normal((b, v, 3, h, w), dtype=np.float32), image_mask=np.ones((b, v), bool),
             domain_id=np.zeros(b, np.int64), proprio=rng.standard_normal((b, pol.dim), dtype=np.float32),
             noise=rng.standard_normal((b, pol.horizon, pol.model_dim), dtype=np.float32))
    if pol.needs_task:
        f["task_id"] = np.zeros(b, np.int64)
    if pol.takes_skill:
        f["skill_id"] = np.zeros(b, np.int64)
    return f


def test_torch_cpu_chunk_matches_the_onnx_engines(policies):
    onnx, torch_cpu = policies
    assert {e.info.backend for e in torch_cpu.engines.values()} == {"torch"}
    assert "chunk" in torch_cpu.engines and torch_cpu._unrolled_steps == torch_cpu.default_steps
    f = _inputs(onnx)
    ref = onnx.generate_actions(**f, steps=onnx.default_steps)
    got = torch_cpu.generate_actions(**f, steps=onnx.default_steps)  # VLM + one chunk call + decode
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the per-step path (RTC prefixes, other step counts) binds the conditioning once, like the ONNX engines
    np.testing.assert_allclose(torch_cpu.generate_actions(**f, steps=3), onnx.generate_actions(**f, steps=3),
                               atol=1e-4)
    extra = torch_cpu.engines["action"].info.extra
    assert extra["cuda_graphs"] == "off" and float(extra["parity_cosine"]) > 0.99999


def test_bf16_parity_is_reported_and_gated(tiny_bundle, monkeypatch):
    from xvla.export.policies.xvla import parity
    from xvla.runtime.bundle import Bundle
    from xvla.runtime.policies.xvla.torch_engine import create_torch_engines

    bundle = Bundle.load(tiny_bundle, verify_hashes=False)
    engines = create_torch_engines(bundle, "torch-cpu-bf16")
    extra = engines["vlm"].info.extra
    assert engines["vlm"].info.precision == "bf16"
    assert 0.99 < float(extra["parity_cosine"]) < 1.0 and float(extra["parity_max_abs"]) > 0  # bf16 is not fp32
    monkeypatch.setitem(parity.MIN_COSINE, "bf16", 1.0)  # a gate no bf16 chunk can pass
    with pytest.raises(EngineError, match="past the parity gate"):
        create_torch_engines(bundle, "torch-cpu-bf16")
