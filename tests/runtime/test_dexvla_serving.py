"""DexVLA served by xvla-serve: a bundle exported from the official conformance checkpoint, through the real
PolicyServer (gRPC), the session, the execution plan and the batchers.

* ``Infer`` with the golden noise reproduces the official actions (1e-4) and the reasoning tokens (exact);
* a 30 Hz Stream with a simulated robot (14-d state, three cameras) runs 300 ticks, every tick accounted;
* batch 2 with per-sample noise in the runtime equals two batch-1 runs, and two concurrent sessions' engine
  calls ride in one batch with the same results;
* RTC is refused at the header with a message naming the field.
"""

from __future__ import annotations

import collections
import json
import os
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import conformance_root
from tests.support.realtime import assert_safe_ticks_explained, assert_ticks_explained
from xvla.benchmarks.serving import serve_in_background
from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.core.images import CameraInput
from xvla.core.tensors import encode_image_raw, numpy_to_tensor, tensor_to_numpy
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(600)


def _golden_set() -> Path | None:
    root = conformance_root()
    for cand in (root / "dexvla", *sorted((root / "dexvla").glob("*")), root):
        if (cand / "meta.json").is_file() and (cand / "goldens.safetensors").is_file() and (cand / "tiny_model").is_dir():
            return cand
    return None


SET = _golden_set()
needs_goldens = pytest.mark.skipif(SET is None, reason="no DexVLA goldens under XVLA_CONFORMANCE_DIR")


@pytest.fixture(scope="session")
def golden():
    if SET is None:
        pytest.skip("no DexVLA goldens under XVLA_CONFORMANCE_DIR")
    from safetensors.numpy import load_file

    g = load_file(str(SET / "goldens.safetensors"))
    return g, json.loads((SET / "meta.json").read_text())


def _expected_actions(g) -> np.ndarray:
    """(B, chunk, 14) official unnormalised actions from per-sample noise (public: e2e; held-out: sample.*)."""
    return g["e2e.actions_unnormalized"] if "e2e.actions_unnormalized" in g else \
        g["e2e.actions_unnormalized_per_sample_noise"]


@pytest.fixture(scope="session")
def dexvla_bundle(golden, tmp_path_factory):
    """The conformance checkpoint exported once per session by ``xvla-export`` (parity-gated), with the set's
    dataset stats, image size and generation bound. ``XVLA_DEXVLA_BUNDLE=DIR`` reuses an exported one."""
    if os.environ.get("XVLA_DEXVLA_BUNDLE"):
        return Path(os.environ["XVLA_DEXVLA_BUNDLE"])
    pytest.importorskip("torch")
    from xvla.export.cli import main

    g, meta = golden
    tmp = tmp_path_factory.mktemp("dexvla")
    stats = tmp / "stats.json"
    stats.write_text(json.dumps({k.split(".")[-1]: g[k].tolist() for k in (
        "input.stats.state_mean", "input.stats.state_std", "input.stats.action_min", "input.stats.action_max")}))
    h, w = g["input.images_uint8"].shape[-2:]
    out = tmp / "bundle"
    rc = main([str(SET / "tiny_model"), "-o", str(out), "--stats", str(stats), "--image-size", f"{h}x{w}",
               "--max-new-tokens", str(meta["gen_kwargs"]["max_new_tokens"]),
               "--steps", str(len(g["sample.timesteps"])), "-q"])
    assert rc == 0
    return out


def _golden_observation(g, meta, names, b: int = 0) -> pb.Observation:
    obs = pb.Observation(frame_index=0, instruction=meta["configs"]["set"]["tasks"][b])
    for i, name in enumerate(names):  # input.images_uint8: (views, B, C, H, W) in the model's camera order
        obs.cameras.add(name=name, image=encode_image_raw(np.ascontiguousarray(g["input.images_uint8"][i, b].transpose(1, 2, 0))))
    obs.proprio.CopyFrom(numpy_to_tensor(g["input.state_raw"][b]))
    return obs


@needs_goldens
async def test_infer_with_the_golden_noise_reproduces_the_official_actions_and_reasoning(dexvla_bundle, golden):
    g, meta = golden
    eos = meta["gen_kwargs"]["eos_token_id"]
    n_samples = g["prompt.input_ids"].shape[0]
    async with serve_in_background(dexvla_bundle) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.PolicyServiceStub(ch)
            desc = await stub.Describe(pb.DescribeRequest(), timeout=10)
            names = [c.name for c in desc.cameras]
            header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(
                denoising_steps=len(g["sample.timesteps"])))
            replies = []
            for b in range(n_samples):  # each sample of the set is one robot's observation
                obs = _golden_observation(g, meta, names, b)
                noise = numpy_to_tensor(g["sample.noise_init"][b])
                replies.append(await stub.Infer(pb.InferRequest(session=header, observation=obs, noise=noise),
                                                timeout=60))
            # the session's bound on the reasoning: greedy, so 3 tokens are the first 3 of the set's run
            header.max_new_tokens = 3
            short = await stub.Infer(pb.InferRequest(session=header, observation=obs, noise=noise), timeout=60)
            header.max_new_tokens = 0
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Infer(pb.InferRequest(session=header, observation=obs, noise=noise), timeout=60)
        tokenizer = server.service.gate_policy.pre.tokenizer
    assert desc.policy_kind == "dexvla" and names == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    expected = _expected_actions(g)
    assert desc.horizon == expected.shape[1] and desc.action_space.dim == 14
    for b, resp in enumerate(replies):
        got = tensor_to_numpy(resp.actions, "actions")
        np.testing.assert_allclose(got, expected[b], atol=1e-4, rtol=0, err_msg=f"sample {b}")
        ids = [int(t) for t in g["gen.new_token_ids"][b]]
        ids = ids[: ids.index(eos)] if eos in ids else ids
        assert resp.text == tokenizer.decode(ids, skip_special_tokens=True) == meta["gen_text"][b]
        assert set(resp.timings.stage_ms) >= {"preprocess", "vision", "prefill", "decode_tokens", "condition",
                                              "diffusion"}
    last = [int(t) for t in g["gen.new_token_ids"][n_samples - 1]]
    if eos not in last[:3]:
        assert short.text == tokenizer.decode(last[:3], skip_special_tokens=True) != replies[-1].text
        assert not np.allclose(tensor_to_numpy(short.actions, "actions"), expected[-1], atol=1e-3)  # less reasoning
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "session.max_new_tokens" in bad.value.details()


@needs_goldens
async def test_a_30hz_stream_of_300_ticks_with_a_simulated_robot_accounts_for_every_tick(dexvla_bundle):
    async with serve_in_background(dexvla_bundle) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            desc = await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=10)
        rng = np.random.default_rng(0)
        state_dim = desc.action_space.accepted_proprio_dims[0]
        pool = [synthetic_observation(0, desc.cameras, state_dim, rng) for _ in range(4)]  # three cameras, 14-d

        def robot(frame: int) -> pb.Observation:
            o = pb.Observation()
            o.CopyFrom(pool[frame % len(pool)])
            o.frame_index = frame
            return o

        # 16-action chunks; replan with 8 planned actions left (267 ms of slack, many tiny chunks' worth)
        header = pb.SessionHeader(task_id=-1, instruction="fold the towel", control_rate_hz=30,
                                  execution=pb.ExecutionSettings(replan_threshold=8))
        res = await run_stream(f"127.0.0.1:{port}", header, robot, n=300, rate_hz=30)
    assert res.code == grpc.StatusCode.OK, res.details
    assert len(res.ticks) == 300 and [t.frame for t in res.ticks] == list(range(300))  # one reply per tick, in order
    sources = collections.Counter(pb.ActionSource.Name(t.source) for t in res.ticks)
    assert sum(sources.values()) == 300 and sources["FIRST_CHUNK"] == 1
    assert_ticks_explained(res, replan_threshold=8)  # on time, and a starved tick only behind a slow chunk
    assert res.starved == res.ticks[-1].reply.starved_ticks, sources
    for t in res.ticks:
        assert t.action.shape == (desc.action_space.dim,) and np.all(np.isfinite(t.action))
    chunk_replies = [t.reply for t in res.ticks if t.reply.HasField("timings")]
    assert len({t.reply.chunk_id for t in res.ticks}) >= 300 // desc.horizon  # it kept replanning
    assert chunk_replies and all(r.timings.stage_ms["decode_tokens"] > 0 for r in chunk_replies)


@needs_goldens
async def test_rtc_is_refused_at_the_header_naming_the_field(dexvla_bundle):
    async with serve_in_background(dexvla_bundle) as (server, port):
        header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(mode=pb.RTC))
        res = await run_stream(f"127.0.0.1:{port}", header, lambda f: pb.Observation(frame_index=f), n=1,
                               rate_hz=None)
    assert res.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "execution.mode" in res.details and "dexvla" in res.details


# ---------------------------------------------------------------------------------------------- batching


def _prepared(policy, g, meta, variant: int):
    from xvla.runtime.policies.base import ObservationInput, Timings

    views = g["input.images_uint8"][:, 0]
    if variant:
        views = np.roll(views, variant * 7, axis=-1)
    cams = {n: CameraInput(np.ascontiguousarray(views[i].transpose(1, 2, 0))) for i, n in enumerate(policy.spec.camera_names)}
    task = meta["configs"]["set"]["tasks"][0] + (" then wipe the table slowly" if variant == 1 else "")
    return policy.prepare(ObservationInput(cams, g["input.state_raw"][0] + variant, task), Timings())


@needs_goldens
def test_batch_of_two_with_per_sample_noise_equals_two_batch_one_runs(dexvla_bundle, golden):
    from xvla.runtime.policies import load_policy

    g, meta = golden
    policy = load_policy(dexvla_bundle, intra_op_threads=1)
    a, b = _prepared(policy, g, meta, 0), _prepared(policy, g, meta, 1)
    assert len(a.input_ids) != len(b.input_ids)  # different prompt lengths: the batch is left-padded
    noise = np.random.default_rng(1).standard_normal((2, policy.horizon, policy.dim)).astype(np.float32)
    both = policy.generate([a, b], noise=noise)
    one = [policy.generate([p], noise=noise[i:i + 1]) for i, p in enumerate((a, b))]
    for i in range(2):
        assert both.new_tokens[i] == one[i].new_tokens[0] and both.texts[i] == one[i].texts[0]
        np.testing.assert_allclose(both.actions[i], one[i].actions[0], atol=1e-5, rtol=0)
    assert not np.allclose(both.actions[0], both.actions[1])  # two samples, two chunks
    # the same observation with two noise draws: per-sample noise really is per sample
    twin = policy.generate([a, a], noise=noise)
    np.testing.assert_allclose(twin.actions[0], one[0].actions[0], atol=1e-5, rtol=0)
    assert np.abs(twin.actions[0] - twin.actions[1]).max() > 1e-3
    policy.close()


@needs_goldens
def test_two_concurrent_sessions_ride_in_one_engine_batch_with_the_batch_one_results(dexvla_bundle, golden):
    from xvla.runtime.batching import BatchingEngine, Planners
    from xvla.runtime.policies import load_policy
    from xvla.runtime.policies.base import PlanContext, Timings

    g, meta = golden
    solo = load_policy(dexvla_bundle, intra_op_threads=1)
    shared = load_policy(dexvla_bundle, intra_op_threads=1)
    planners = Planners()
    batches: list[tuple[str, int]] = []
    shared.engines = {name: BatchingEngine(e, 8, window_ms=1000.0, planners=planners,
                                           on_batch=lambda graph, n, ms: batches.append((graph, n)))
                      for name, e in shared.engines.items()}
    obs = [_prepared(shared, g, meta, v) for v in (0, 2)]  # same prompt length, different images and states
    noise = np.random.default_rng(2).standard_normal((2, shared.horizon, shared.dim)).astype(np.float32)
    chunks: dict[int, object] = {}
    entered = threading.Barrier(2)

    def session(i: int) -> None:
        with planners:
            entered.wait()
            chunks[i] = shared.plan(obs[i], PlanContext(steps=4, noise=noise[i], max_new_tokens=5), Timings())

    threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    by_graph = collections.defaultdict(set)
    for graph, n in batches:
        by_graph[graph].add(n)
    for graph in ("vision", "prefill", "condition", "denoise"):  # shapes independent of when a sample stops
        assert by_graph[graph] == {2}, dict(by_graph)
    assert max(by_graph["decode"], default=2) == 2, dict(by_graph)
    assert all(chunks[i].timings.batch_size == 2 for i in range(2))
    for i in range(2):
        ref = solo.plan(obs[i], PlanContext(steps=4, noise=noise[i], max_new_tokens=5), Timings())
        assert chunks[i].text == ref.text
        np.testing.assert_allclose(chunks[i].actions, ref.actions, atol=1e-5, rtol=0)
    shared.close()
    solo.close()


@needs_goldens
def test_the_serving_benchmark_reports_every_stage_for_both_sides(dexvla_bundle, capsys):
    pytest.importorskip("torch")
    from xvla.benchmarks.dexvla_serving import STAGES, main

    assert main(["--bundle", str(dexvla_bundle), "--repeats", "1", "--new-tokens", "2", "--steps", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["served_onnxruntime_ms"]) >= set(STAGES) and set(out["pytorch_ms"]) >= set(STAGES[1:])
    assert out["new_tokens"] <= 2 and all(v > 0 for v in out["ort_over_torch"].values())


# ---------------------------------------------------------------------------------------------- the agent side


class AlohaSim:
    """A bimanual 14-d robot (ALOHA layout: per arm 6 joint targets + gripper) with DexVLA's three cameras."""

    def __init__(self, cameras: list[str], size: tuple[int, int] = (120, 160)) -> None:
        from xvla.core.embodiments.layout import ActionLayout, Part, PartKind

        self.layout = ActionLayout("aloha", (Part("left_arm", 0, 6, PartKind.POSITION),
                                             Part("left_gripper", 6, 7, PartKind.GRIPPER),
                                             Part("right_arm", 7, 13, PartKind.POSITION),
                                             Part("right_gripper", 13, 14, PartKind.GRIPPER)))
        self.cameras, self.size = cameras, size
        self.state = np.zeros(14, np.float32)
        self.rng = np.random.default_rng(0)
        self.frames = [self.rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(4)]
        self.n = 0

    def read_observation(self):
        import time as _time

        from xvla.agents.robot import RobotObservation

        self.n += 1
        return RobotObservation(images={c: self.frames[(self.n + i) % 4] for i, c in enumerate(self.cameras)},
                                state=self.state.copy(), timestamp=_time.monotonic())

    def apply_action(self, action: np.ndarray) -> None:
        self.state = 0.9 * self.state + 0.1 * np.asarray(action, np.float32)


@pytest.fixture(scope="module")
def served_process(dexvla_bundle):
    """``xvla-serve`` on the DexVLA bundle in its own process (as deployed; one event loop per process)."""
    from tests.support.serve import xvla_serve

    with xvla_serve(["--bundle", str(dexvla_bundle)], Path(dexvla_bundle).parent / "serve-dexvla.log",
                    timeout_s=120) as served:
        yield served


@needs_goldens
def test_the_agent_control_loop_drives_a_simulated_14d_robot_for_300_ticks(served_process):
    """The robot-side agent (ControlLoop + PolicyClient), unchanged, on a DexVLA policy."""
    from xvla.agents.client import ClientConfig, PolicyClient
    from xvla.agents.control_loop import ControlLoop, LoopConfig

    target, desc = served_process
    robot = AlohaSim([c.name for c in desc.cameras])
    executed = []
    header = pb.SessionHeader(robot_id="sim-aloha", task_id=-1, instruction="fold the towel", control_rate_hz=30,
                              execution=pb.ExecutionSettings(replan_threshold=8))
    with PolicyClient(ClientConfig([target])) as client:
        loop = ControlLoop(robot, client, header, LoopConfig(rate_hz=30.0), on_tick=lambda f, k, a: executed.append(a))
        st = loop.run(ticks=300)
    assert st.accounted() and st.ticks == 300, st.format()  # every tick: fresh, from the plan, or safe
    assert st.sessions == 1 and st.reconnects == 0 and st.observations_lost == 0, st.format()
    assert st.skipped_ticks <= 3, (st.skips, st.format())  # zero: the closed-loop benchmark's figure
    assert_safe_ticks_explained({**st.summary(), **st.ticks_and_events()})  # cold start, or a silent service
    assert st.fresh_ticks + st.plan_ticks > 150, st.format()  # the policy drove the robot
    a = np.stack(executed)
    assert a.shape == (300, 14) and np.all(np.isfinite(a))
