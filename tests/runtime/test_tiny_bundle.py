"""The real thing on the tiny exported bundle: 300 observations at 30 Hz, starvation with a slow engine,
Infer == Policy.generate_actions, tamper detection, Describe."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from tests.support.realtime import assert_ticks_explained
from xvla.benchmarks.serving import serve_in_background, slow_engines
from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.core.tensors import numpy_to_tensor, tensor_to_numpy
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime import Policy
from xvla.runtime.bundle import BundleError

pytestmark = pytest.mark.timeout(240)


async def _describe(port):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=10)


async def test_300_observations_at_30hz_one_action_each_in_order_every_tick_explained(tiny_bundle):
    async with serve_in_background(tiny_bundle) as (server, port):
        desc = await _describe(port)
        rng = np.random.default_rng(0)
        pdim = desc.action_space.accepted_proprio_dims[0]
        pool = [synthetic_observation(0, desc.cameras, pdim, rng) for _ in range(4)]

        def make(f):
            o = pb.Observation()
            o.CopyFrom(pool[f % 4])
            o.frame_index = f
            return o

        # replan with 20 planned actions left: 667 ms of slack, >= 4x a tiny chunk on a shared 2-core CPU
        header = pb.SessionHeader(task_id=0 if desc.tasks else -1, instruction="pick up the red cup", control_rate_hz=30,
                                  execution=pb.ExecutionSettings(replan_threshold=20))
        res = await run_stream(f"127.0.0.1:{port}", header, make, n=300, rate_hz=30)
        metrics = server.metrics.text()
    assert res.code == grpc.StatusCode.OK, res.details
    assert [t.frame for t in res.ticks] == list(range(300))  # exactly one action per observation, in order
    assert res.ticks[0].source == pb.FIRST_CHUNK
    # Zero starved ticks is a benchmark figure (python -m xvla.benchmarks.closed_loop, .e2e); here every
    # tick is explained: replanning on time, and a starved tick only behind a chunk slower than its slack.
    assert_ticks_explained(res, replan_threshold=20)
    assert all(t.source in (pb.QUEUE, pb.STARVED) for t in res.ticks[1:])
    assert res.ticks[-1].reply.starved_ticks == res.starved  # the server counts what the robot saw
    for t in res.ticks:
        assert t.action.shape == (desc.action_space.dim,) and np.all(np.isfinite(t.action))
    assert len({t.reply.chunk_id for t in res.ticks}) >= 300 // desc.horizon  # it kept replanning
    assert f"xvla_starved_ticks_total {float(res.starved)}" in metrics


async def test_slow_engine_starved_ticks_are_counted_not_hidden(tiny_bundle):
    # +700 ms per VLM call: a chunk takes longer than the 15 frames (0.5 s) of slack the default threshold leaves
    async with serve_in_background(tiny_bundle, engine_wrapper=slow_engines(700, ("vlm",))) as (server, port):
        desc = await _describe(port)
        rng = np.random.default_rng(0)
        obs = synthetic_observation(0, desc.cameras, desc.action_space.accepted_proprio_dims[0], rng)

        def make(f):
            o = pb.Observation()
            o.CopyFrom(obs)
            o.frame_index = f
            return o

        res = await run_stream(f"127.0.0.1:{port}", pb.SessionHeader(task_id=0 if desc.tasks else -1), make,
                               n=75, rate_hz=30)
        metrics = server.metrics.text()
    assert res.code == grpc.StatusCode.OK, res.details
    assert [t.frame for t in res.ticks] == list(range(75))
    starved = [t for t in res.ticks if t.source in (pb.STARVED, pb.HOLD)]
    assert starved, "a 700 ms VLM cannot keep a 30 Hz queue filled"
    assert res.ticks[-1].reply.starved_ticks == len(starved)
    assert min(t.latency_ms for t in starved) > 50  # those ticks really waited for inference
    assert f"xvla_starved_ticks_total {float(len(starved))}" in metrics
    assert_ticks_explained(res, replan_threshold=15)  # the 700 ms chunks explain every one of them
    with pytest.raises(AssertionError, match="replanning started late"):  # the check sees a late replan
        assert_ticks_explained(res, replan_threshold=25)


async def test_infer_with_noise_equals_policy_generate_actions(tiny_bundle):
    policy = Policy.load(tiny_bundle)
    rng = np.random.default_rng(3)
    async with serve_in_background(tiny_bundle) as (server, port):
        desc = await _describe(port)
        obs = synthetic_observation(0, desc.cameras, desc.action_space.accepted_proprio_dims[0], rng)
        noise = rng.standard_normal((desc.horizon, policy.model_dim)).astype(np.float32)
        header = pb.SessionHeader(task_id=0 if desc.tasks else -1, instruction="open the drawer",
                                  execution=pb.ExecutionSettings(denoising_steps=4))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = await pb_grpc.PolicyServiceStub(ch).Infer(
                pb.InferRequest(session=header, observation=obs, noise=numpy_to_tensor(noise)), timeout=30)
    from xvla.runtime.policies.base import ObservationInput, Timings
    from xvla.runtime.wire import decode_cameras

    prep = policy.prepare(ObservationInput(decode_cameras(obs), tensor_to_numpy(obs.proprio, "p"), "open the drawer"),
                          Timings())
    domain = policy.spec.default_domain  # the header leaves domain_id unset: the bundle's default
    ref = policy.generate_actions(prep.input_ids, prep.image_input, prep.image_mask, np.array([domain]), prep.proprio,
                                  steps=4, noise=noise[None], task_id=np.zeros(1, np.int64) if policy.needs_task else None)
    got = tensor_to_numpy(resp.actions, "actions")
    assert got.shape == (desc.horizon, desc.action_space.dim)
    np.testing.assert_allclose(got, ref[0], atol=1e-5)
    assert resp.timings.total_ms > 0 and resp.timings.vlm_ms > 0 and resp.timings.denoise_ms > 0


def test_tampered_bundle_is_refused_naming_the_file(tiny_bundle, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, copy)
    vlm = copy / "vlm.onnx"
    data = bytearray(vlm.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vlm.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="vlm.onnx"):
        Policy.load(copy)
    (copy / "action.onnx").unlink()
    with pytest.raises(BundleError, match="action.onnx"):
        Policy.load(copy, verify=False)
