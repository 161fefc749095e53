"""Benchmark fixes of issue 13 (fix 8): the torch runner casts the model once (no autocast over fp32
weights), labels device-resident inputs io=device, and peak memory is reset before every case."""

from __future__ import annotations

import json

import pytest

from xvla.benchmarks import components
from xvla.benchmarks.components import ComponentConfig, Runner, TorchRunner, run_components


@pytest.fixture(scope="module")
def manifest(bench_bundle):
    return json.loads((bench_bundle / "manifest.json").read_text())


def test_bf16_casts_the_model_once_and_runs_every_stage(bench_bundle, manifest):
    import torch

    runner = TorchRunner(bench_bundle, manifest, "bf16", 1, preset="tiny", device="cpu")
    floats = [p.dtype for p in runner.model.parameters() if p.is_floating_point()]
    assert floats and set(floats) == {torch.bfloat16}
    for stage in runner.stages():
        out = runner.prepare(stage, 1)()
        assert out is not None
    assert runner.io_for("chunk") == "host" and runner.io_for("vlm") == "host"  # CPU tensors
    runner.close()


def test_cuda_tensors_are_labelled_device():
    runner = object.__new__(TorchRunner)  # the label logic only; no GPU here
    runner.io = "device"
    assert runner.io_for("chunk") == "device" and runner.io_for("action_step") == "device"


class _MemoryRunner(Runner):
    backend, provider = "fake", "fake"

    def __init__(self):
        self.events: list[str] = []

    def stages(self):
        return ["vlm", "action_step"]

    def prepare(self, stage, batch):
        self.events.append(f"prepare {stage} {batch}")
        return lambda: None

    def reset_memory(self):
        self.events.append("reset")

    def memory_gib(self):
        self.events.append("read")
        return 1.0


def test_peak_memory_is_reset_before_every_case(monkeypatch, tmp_path):
    runner = _MemoryRunner()
    monkeypatch.setattr(components, "make_runner", lambda *a, **k: runner)
    cfg = ComponentConfig(preset="tiny", bundle_dir=tmp_path, backends=("fake",), precisions=("fp32",),
                          batch_sizes=(1, 2), warmup=0, iters=1, steps=1, device="cpu")
    cases = run_components(cfg, {"graphs": {}})
    assert len(cases) == 4 and all(c.memory_gib == 1.0 for c in cases)
    prepares = [i for i, e in enumerate(runner.events) if e.startswith("prepare")]
    assert all(runner.events[i - 1] == "reset" for i in prepares)
