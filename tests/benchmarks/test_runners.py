"""Component runners on the tiny bundle: the timed closures compute the real thing, unrunnable backends say why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xvla.benchmarks.components import OrtRunner, Skip, TensorRTRunner, TorchRunner
from xvla.benchmarks.inputs import graph_feeds


@pytest.fixture(scope="module")
def manifest(bench_bundle) -> dict:
    return json.loads((bench_bundle / "manifest.json").read_text())


def test_io_binding_path_returns_what_a_plain_run_returns(bench_bundle, manifest) -> None:
    """The device-resident (io-binding + synchronize_outputs) path used on GPUs, exercised on CPU memory."""
    bound = OrtRunner(bench_bundle, manifest, "fp32", 10, backend="ort-cpu", io_binding=True)
    plain = OrtRunner(bench_bundle, manifest, "fp32", 10, backend="ort-cpu")
    assert (bound.io, plain.io) == ("device", "host")
    binding = bound.prepare("action_step", 2)()
    got = binding.copy_outputs_to_cpu()[0]
    want = plain.prepare("action_step", 2)()[0]
    assert got.shape == (2, manifest["policy"]["action_space"]["num_actions"], manifest["policy"]["action_space"]["model_dim"])
    np.testing.assert_array_equal(got, want)


def test_chunk_stage_runs_the_runtime_policy_and_matches_torch(bench_bundle, manifest) -> None:
    ort_chunk = OrtRunner(bench_bundle, manifest, "fp32", 4, backend="ort-cpu").prepare("chunk", 1)()
    torch_chunk = TorchRunner(bench_bundle, manifest, "fp32", 4, preset="tiny", device="cpu").prepare("chunk", 1)()
    assert ort_chunk.shape == (1, 30, 23)
    # same seed-0 weights as the bundle, same noise and inputs: the two backends agree
    np.testing.assert_allclose(ort_chunk, torch_chunk.numpy(), atol=1e-4)


def test_feeds_are_valid_ids_and_poses(manifest) -> None:
    f = graph_feeds(manifest, "vlm", 3)
    assert f["image_input"].shape == (3, 3, 3, 224, 224) and f["image_mask"].all()
    assert 0 <= f["input_ids"].min() and f["input_ids"].max() < manifest["policy"]["model_config"]["florence_config"]["vocab_size"]
    a = graph_feeds(manifest, "action", 2)
    assert a["domain_id"].max() < manifest["policy"]["model_config"]["num_domains"] and a["t"].shape == (2,)


def test_unavailable_backends_are_skipped_with_a_reason(bench_bundle, manifest) -> None:
    with pytest.raises(Skip, match="CUDAExecutionProvider|onnxruntime initialised"):
        OrtRunner(bench_bundle, manifest, "fp32", 10, backend="ort-cuda")
    with pytest.raises(Skip, match="fp32"):
        OrtRunner(bench_bundle, manifest, "fp16", 10, backend="ort-cpu")
    with pytest.raises(Skip, match="no TensorRT plans"):
        TensorRTRunner(bench_bundle, manifest, "fp16", 10)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(Skip, match="CUDA is not available"):
            TorchRunner(bench_bundle, manifest, "fp16", 10, preset="tiny", device="cuda")
