"""The gRPC service end to end on fake policies whose right answers are known exactly.

The fake action graph predicts action[j] = proprio + j. Robots here report proprio = frame
index, so the correct action at EVERY frame equals the frame index: any misplacement of a
chunk on the frame axis (latency compensation), any lost/reordered reply, shows up.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.runtime.fakes import (
    FAKE_CAMERAS,
    FAKE_D,
    FAKE_SKILLS,
    FAKE_T,
    FakeAction,
    FakeVLM,
    fake_factory,
    fake_policy,
)
from xvla.benchmarks.serving import serve_in_background
from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.proto import policy_pb2 as pb
from xvla.runtime.service import ServiceConfig
from xvla.runtime.skills import RoutingTable

CAMS = [pb.CameraSpec(name=n, height=8, width=8) for n in FAKE_CAMERAS]


def obs_at(frame: int, rng=np.random.default_rng(0)) -> pb.Observation:
    return synthetic_observation(frame, CAMS, FAKE_D, rng, proprio_value=float(frame))


def single(tmp_path, **kw):
    pol = fake_policy(tmp_path / "fake", **kw)
    return serve_in_background(routes=RoutingTable.single(tmp_path / "fake"), policy_factory=fake_factory({"default": pol}),
                               config=ServiceConfig(batch_window_ms=2.0)), pol


@pytest.mark.parametrize("mode", [pb.TEMPORAL_ENSEMBLE, pb.RECEDING_HORIZON, pb.RTC])
async def test_every_frame_gets_its_own_action_in_order(tmp_path, mode):
    bg, _ = single(tmp_path, action=FakeAction(delay_s=0.01))
    async with bg as (server, port):
        header = pb.SessionHeader(task_id=-1, instruction="pick", execution=pb.ExecutionSettings(mode=mode, replan_threshold=5))
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=40, rate_hz=200)
    assert res.code == grpc.StatusCode.OK, res.details
    assert [t.frame for t in res.ticks] == list(range(40))
    for t in res.ticks:
        assert t.action == pytest.approx(np.full(FAKE_D, t.frame)), (t.frame, t.action, t.reply.planned_from_frame)
    assert res.ticks[0].source == pb.FIRST_CHUNK
    assert res.accepted is not None and res.accepted.policy.horizon == FAKE_T


async def test_without_latency_compensation_actions_lag(tmp_path):
    bg, _ = single(tmp_path, action=FakeAction(delay_s=0.03))
    async with bg as (server, port):
        header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(
            mode=pb.RECEDING_HORIZON, replan_threshold=4, disable_latency_compensation=True))
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=40, rate_hz=100)
    assert res.code == grpc.StatusCode.OK, res.details
    # a chunk planned at frame f0 that arrives later starts at its arrival frame: actions lag the frames
    lags = [t.frame - t.action[0] for t in res.ticks if t.reply.planned_from_frame and t.source == pb.QUEUE]
    assert max(lags) > 0


async def test_starved_ticks_are_counted_and_reported(tmp_path):
    # 3 steps x 60 ms per chunk > 8 actions at 100 Hz: the queue must run dry
    bg, _ = single(tmp_path, action=FakeAction(delay_s=0.06))
    async with bg as (server, port):
        header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(mode=pb.RECEDING_HORIZON, replan_threshold=2))
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=30, rate_hz=100)
        metrics = server.metrics.text()
    assert res.code == grpc.StatusCode.OK, res.details
    starved = [t for t in res.ticks if t.source == pb.STARVED]
    assert starved, "a too-slow engine must produce STARVED replies"
    assert res.ticks[-1].reply.starved_ticks == res.starved == len(starved)
    assert f"xvla_starved_ticks_total {float(len(starved))}" in metrics
    for t in res.ticks:  # still one correct action per frame, just late
        assert t.action == pytest.approx(np.full(FAKE_D, t.frame))


def _replans_keep_committed(res) -> bool:
    """True if no chunk ever changed an action already planned for a frame (checked on the plans sent with replies)."""
    planned: dict[int, float] = {}
    ok = True
    for t in res.ticks:
        if t.frame in planned:
            ok &= abs(t.action[0] - planned[t.frame]) < 1e-3
        if t.reply.HasField("chunk"):
            rest = np.frombuffer(t.reply.chunk.data, np.float32).reshape(list(t.reply.chunk.shape))
            for j, row in enumerate(rest):
                f = t.frame + 1 + j
                if f in planned:
                    ok &= abs(row[0] - planned[f]) < 1e-3
                else:
                    planned[f] = float(row[0])
    return bool(ok)


@pytest.mark.parametrize("mode", [pb.RTC, pb.RECEDING_HORIZON])
async def test_rtc_new_chunk_continues_the_committed_actions(tmp_path, mode):
    # every chunk is offset by 1000 * chunk number: a replan that re-decides a planned frame jumps by 1000
    act = FakeAction(per_chunk=lambda k: 1000.0 * k, steps=2, delay_s=0.01)
    bg, _ = single(tmp_path, action=act)
    async with bg as (server, port):
        header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(
            mode=mode, replan_threshold=5, rtc_delay_frames=FAKE_T - 1, denoising_steps=2))
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=30, rate_hz=100)
    assert res.code == grpc.StatusCode.OK, res.details
    assert len({t.reply.chunk_id for t in res.ticks}) >= 3  # several replans happened
    # RTC: the committed actions are imposed as the new chunk's prefix, nothing planned ever changes;
    # receding horizon (same cadence, no inpainting) does change them: the check is not vacuous
    assert _replans_keep_committed(res) is (mode == pb.RTC)


async def test_ensemble_newest_wins_gripper_dim(tmp_path):
    act = FakeAction(per_chunk=lambda k: 10.0 * k, steps=2)
    bg, _ = single(tmp_path, action=act)
    async with bg as (server, port):
        header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(
            mode=pb.TEMPORAL_ENSEMBLE, replan_threshold=FAKE_T - 1, ensemble_k=0.5, denoising_steps=2))
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=30, rate_hz=None)
    assert res.code == grpc.StatusCode.OK, res.details
    blended = [t for t in res.ticks if abs(t.action[0] - t.action[FAKE_D - 1]) > 1e-3]
    assert blended, "with overlapping chunks of different values the arm dims are blended"
    for t in blended:  # gripper (last dim) = the newest chunk's value = frame + 10 * newest chunk number
        assert (t.action[FAKE_D - 1] - t.frame) % 10 == pytest.approx(0, abs=1e-4)
        assert t.action[FAKE_D - 1] >= t.action[0]


async def test_skill_gating_and_routing_with_forced_classifier(tmp_path):
    # forced classifier: chunks 0-3 say "navigate to", then "pick up from" for ever
    script = lambda i: [30.0, 0.0, 0.0] if i < 4 else [0.0, 30.0, 0.0]  # noqa: E731
    vlm = FakeVLM(script, 3)
    gen = fake_policy(tmp_path / "gen", vlm=vlm, action=FakeAction(skill_input=True), skills=FAKE_SKILLS)
    pick = fake_policy(tmp_path / "pick", vlm=FakeVLM(), action=FakeAction(offset=5000.0, skill_input=True),
                       skills=FAKE_SKILLS)
    routes = RoutingTable.from_dict({"default": "gen", "bundles": {"gen": "gen", "pick": "pick"},
                                     "routes": {"pick up from": "pick", "press": "pick"},
                                     "gating": {"ema_alpha": 0.5, "switch_margin": 0.2, "min_dwell_chunks": 2}},
                                    base_dir=tmp_path)
    async with serve_in_background(routes=routes, policy_factory=fake_factory({"gen": gen, "pick": pick})) as (server, port):
        vlm.calls = 0  # forget the warm-up call: chunk k sees script(k)
        header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(
            mode=pb.RECEDING_HORIZON, execute_horizon=2, replan_threshold=1))
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=30, rate_hz=None)
    assert res.code == grpc.StatusCode.OK, res.details
    by_chunk = {}
    for t in res.ticks:
        by_chunk.setdefault(t.reply.chunk_id, t)
    seq = [(t.reply.skill, t.reply.route) for _, t in sorted(by_chunk.items())]
    # hand-computed gate: smoothed P(pick) after the 5th, 6th, 7th chunk = 0.5, 0.75, 0.875;
    # it may switch at the 6th chunk (lead 0.5 >= 0.2, held 5 >= 2)
    assert seq[:5] == [("navigate to", "gen")] * 5
    assert seq[5:8] == [("pick up from", "pick")] * 3
    t_pick = by_chunk[sorted(by_chunk)[6]]
    # the pick route's action graph ran with skill id 1: frame + 5000 + 100
    assert t_pick.action == pytest.approx(np.full(FAKE_D, t_pick.frame + 5100.0))
    assert t_pick.reply.progress == pytest.approx(0.5)  # progress of skill 1 from the fake head [0.1, 0.5, 0.9]


async def test_forced_skill_header(tmp_path):
    gen = fake_policy(tmp_path / "gen", vlm=FakeVLM(lambda i: [30.0, 0.0, 0.0], 3), action=FakeAction(skill_input=True),
                      skills=FAKE_SKILLS)
    routes = RoutingTable.from_dict({"bundles": {"gen": "gen"}}, base_dir=tmp_path)
    async with serve_in_background(routes=routes, policy_factory=fake_factory({"gen": gen})) as (server, port):
        header = pb.SessionHeader(task_id=-1, skill="press")
        res = await run_stream(f"127.0.0.1:{port}", header, obs_at, n=5, rate_hz=None)
    assert res.code == grpc.StatusCode.OK, res.details
    assert res.ticks[0].reply.skill == "press" and res.ticks[0].reply.skill_id == 2
    assert res.ticks[0].action == pytest.approx(np.full(FAKE_D, 200.0))


async def test_jpeg_png_at_any_size_and_float64_proprio(tmp_path):
    import cv2

    bg, _ = single(tmp_path)
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    png = cv2.imencode(".png", img)[1].tobytes()

    def make(frame):
        o = pb.Observation(frame_index=frame)
        o.cameras.add(name="head", image=pb.Image(encoding=pb.JPEG, data=jpeg))
        o.cameras.add(name="left_wrist", image=pb.Image(encoding=pb.PNG, data=png))
        from xvla.core.tensors import numpy_to_tensor
        o.proprio.CopyFrom(numpy_to_tensor(np.full(FAKE_D, float(frame), np.float64)))  # float64 accepted
        return o

    async with bg as (server, port):
        res = await run_stream(f"127.0.0.1:{port}", pb.SessionHeader(task_id=-1), make, n=12, rate_hz=None)
    assert res.code == grpc.StatusCode.OK, res.details
    assert all(t.action == pytest.approx(np.full(FAKE_D, t.frame)) for t in res.ticks)
