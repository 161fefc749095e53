"""The native TensorRT engine against the recorded fake of TensorRT + cuda-python (issue 13 fixes 3, 4, 6).

No GPU needed: the fake's "device" memory is host memory, every allocation and copy is recorded.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.support import fake_tensorrt


@pytest.fixture
def trt(monkeypatch):
    return fake_tensorrt.install(monkeypatch)


def _engine(tmp_path, max_batch=4):
    from xvla.runtime.engines.tensorrt_engine import TensorRTEngine

    plan = tmp_path / "action.plan"
    plan.write_bytes(b"fake-plan")
    return TensorRTEngine(plan, "action", max_batch=max_batch, precision="fp16")


def _feeds(b, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((b, 3), dtype=np.float32), "c": rng.standard_normal((b, 2), dtype=np.float32)}


def test_no_allocation_while_serving_and_pinned_copies(trt, tmp_path):
    eng = _engine(tmp_path, max_batch=4)
    allocs = (list(trt.device_allocs), list(trt.host_allocs))
    assert len(allocs[0]) == 3 and len(allocs[1]) == 3  # x, c, out: one device + one pinned buffer each
    assert allocs[0][0] == 4 * 3 * 4  # sized for max_batch rows
    for b in (1, 3, 4, 2, 1):
        f = _feeds(b, b)
        out = eng.run(f)["out"]
        np.testing.assert_allclose(out, 2 * f["x"] + f["c"].sum(1, keepdims=True), rtol=1e-6)
    assert (trt.device_allocs, trt.host_allocs) == allocs and not trt.frees  # nothing allocated or freed
    assert all(pinned for kind, _, pinned in trt.copies)  # every copy is from/to page-locked memory
    eng.close()
    assert len(trt.frees) == 6


def test_picks_the_profile_of_each_batch(trt, tmp_path):
    eng = _engine(tmp_path, max_batch=4)
    assert eng.profiles == [(1, 1, 1), (2, 4, 4)] and eng.batch_limit == 4
    trt.profile_switches.clear()
    for b in (1, 1, 3, 4, 1):
        eng.run(_feeds(b))
    assert trt.profile_switches == [0, 1, 0]  # switched only when the bucket changed
    assert trt.executions == [1, 1, 3, 4, 1]


def test_max_batch_is_clamped_to_the_profiles(trt, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        eng = _engine(tmp_path, max_batch=32)
    assert eng.max_rows == 4 and eng.info.max_batch == 4 and eng.batch_limit == 4
    assert "exceeds the plan's largest optimisation profile (4)" in caplog.text
    from xvla.runtime.engines.base import EngineError

    with pytest.raises(EngineError, match="optimisation profile"):
        eng.run(_feeds(5))


def test_static_inputs_are_uploaded_once_per_handle(trt, tmp_path):
    eng = _engine(tmp_path, max_batch=4)
    f = _feeds(2)
    static = eng.bind_static({"c": f["c"]})
    trt.copies.clear()
    for step in range(10):
        x = np.full((2, 3), step, np.float32)
        out = eng.run_bound(static, {"x": x})["out"]
        np.testing.assert_allclose(out, 2 * x + f["c"].sum(1, keepdims=True), rtol=1e-6)
    h2d = [n for kind, n, _ in trt.copies if kind == "cudaMemcpyHostToDevice"]
    assert h2d.count(2 * 2 * 4) == 1  # c: once for the 10 steps
    assert h2d.count(2 * 3 * 4) == 10  # x: every step
    # another handle (another session's chunk) in between: re-uploaded, results stay right
    other = eng.bind_static({"c": np.zeros((2, 2), np.float32)})
    np.testing.assert_allclose(eng.run_bound(other, {"x": f["x"]})["out"], 2 * f["x"], rtol=1e-6)
    np.testing.assert_allclose(eng.run_bound(static, {"x": f["x"]})["out"],
                               2 * f["x"] + f["c"].sum(1, keepdims=True), rtol=1e-6)
    # a plain run overwrites the buffer: the handle must upload again afterwards
    eng.run(_feeds(2, 9))
    np.testing.assert_allclose(eng.run_bound(static, {"x": f["x"]})["out"],
                               2 * f["x"] + f["c"].sum(1, keepdims=True), rtol=1e-6)
