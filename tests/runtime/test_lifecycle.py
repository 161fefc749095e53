"""Health (SERVING only once engines are loaded and warmed up), graceful shutdown, Describe, batching across sessions."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.runtime.fakes import FAKE_CAMERAS, FAKE_D, FAKE_T, FakeAction, FakeVLM, fake_factory, fake_policy
from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.server import SERVICE_NAME, PolicyServer
from xvla.runtime.service import ServiceConfig
from xvla.runtime.skills import RoutingTable

CAMS = [pb.CameraSpec(name=n, height=8, width=8) for n in FAKE_CAMERAS]


async def _health(ch, service: str = "") -> int:
    resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return resp.status


async def test_serving_only_after_load_and_warmup(tmp_path):
    vlm = FakeVLM()
    pol = fake_policy(tmp_path / "fake", vlm=vlm)
    gate = threading.Event()

    def slow_factory(route, path, cfg):
        gate.wait(timeout=20)  # "loading engines" until the test lets it finish
        return pol

    server = PolicyServer(RoutingTable.single(tmp_path / "fake"), ServiceConfig(), policy_factory=slow_factory)
    port = await server.start(load=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert await _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
        loading = asyncio.create_task(server.load())
        await asyncio.sleep(0.1)
        assert await _health(ch, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert vlm.calls == 0
        gate.set()
        await loading
        assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
        assert await _health(ch, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        assert vlm.calls >= 1  # warm-up ran before SERVING
        desc = await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=5)
        assert desc.horizon == FAKE_T and desc.action_space.dim == FAKE_D
        assert [c.name for c in desc.cameras] == list(FAKE_CAMERAS) and desc.cameras[0].height == 8
        assert list(desc.action_space.accepted_proprio_dims) == [FAKE_D]
        assert {e.graph for e in desc.engines} == {"vlm", "action"}
    await server.stop(grace=1)


async def test_graceful_shutdown_ends_streams_with_unavailable(tmp_path):
    pol = fake_policy(tmp_path / "fake", action=FakeAction(delay_s=0.002))
    server = PolicyServer(RoutingTable.single(tmp_path / "fake"), ServiceConfig(), policy_factory=fake_factory({"default": pol}))
    port = await server.start()
    rng = np.random.default_rng(0)
    stream = asyncio.create_task(run_stream(
        f"127.0.0.1:{port}", pb.SessionHeader(task_id=-1),
        lambda f: synthetic_observation(f, CAMS, FAKE_D, rng, float(f)), n=10_000, rate_hz=100))
    await asyncio.sleep(0.5)
    stopping = asyncio.create_task(server.stop(grace=2))
    res = await stream
    await stopping
    assert res.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in res.details
    assert len(res.ticks) > 10  # it was served until the shutdown
    assert [t.frame for t in res.ticks] == list(range(len(res.ticks)))


async def test_sessions_share_batched_engine_calls(tmp_path):
    vlm, act = FakeVLM(delay_s=0.01), FakeAction(delay_s=0.01)
    pol = fake_policy(tmp_path / "fake", vlm=vlm, action=act)
    cfg = ServiceConfig(batch_window_ms=20.0)
    server = PolicyServer(RoutingTable.single(tmp_path / "fake"), cfg, policy_factory=fake_factory({"default": pol}))
    port = await server.start()
    vlm.batch_sizes.clear()
    act.batch_sizes.clear()

    def robot(s):
        rng = np.random.default_rng(s)
        return lambda f: synthetic_observation(f, CAMS, FAKE_D, rng, float(f + 1000 * s))

    header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(mode=pb.RECEDING_HORIZON, replan_threshold=4))
    results = await asyncio.gather(*[run_stream(f"127.0.0.1:{port}", header, robot(s), n=40, rate_hz=50) for s in range(4)])
    metrics = server.metrics.text()
    await server.stop(grace=1)
    for s, res in enumerate(results):
        assert res.code == grpc.StatusCode.OK, res.details
        assert all(t.action == pytest.approx(np.full(FAKE_D, t.frame + 1000 * s)) for t in res.ticks)
    # concurrent sessions' VLM calls and denoising steps rode in shared engine calls
    assert max(vlm.batch_sizes) > 1 and max(act.batch_sizes) > 1
    assert sum(act.batch_sizes) > len(act.batch_sizes)
    assert 'xvla_batch_size_count{graph="action"}' in metrics


async def test_metrics_endpoint_and_reflection(tmp_path):
    import urllib.request

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    pol = fake_policy(tmp_path / "fake")
    server = PolicyServer(RoutingTable.single(tmp_path / "fake"), ServiceConfig(), metrics_port=0,
                          policy_factory=fake_factory({"default": pol}))
    port = await server.start()
    rng = np.random.default_rng(0)
    res = await run_stream(f"127.0.0.1:{port}", pb.SessionHeader(task_id=-1),
                           lambda f: synthetic_observation(f, CAMS, FAKE_D, rng, float(f)), n=20, rate_hz=None)
    assert res.code == grpc.StatusCode.OK
    text = await asyncio.get_running_loop().run_in_executor(
        None, lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode())
    assert 'xvla_ticks_total{source="QUEUE"}' in text and 'xvla_stage_seconds_count{route="default",stage="vlm"}' in text
    assert "xvla_sessions 0.0" in text  # the stream has closed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def reqs():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = []
        async for r in stub.ServerReflectionInfo(reqs()):
            names = [s.name for s in r.list_services_response.service]
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    await server.stop(grace=1)


async def test_run_stream_returns_after_the_server_closed_the_session(tmp_path):
    """The cause of a flaky `xvla_sessions 1.0`: the client stopped at its last reply and cancelled the
    call, so the server closed the session (waiting for the chunk in flight) after the client had moved
    on. run_stream now half-closes and waits for the final status; a chunk is always in flight here."""
    pol = fake_policy(tmp_path / "fake", action=FakeAction(delay_s=0.2))
    server = PolicyServer(RoutingTable.single(tmp_path / "fake"), ServiceConfig(), policy_factory=fake_factory({"default": pol}))
    port = await server.start()
    rng = np.random.default_rng(0)
    header = pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(mode=pb.RECEDING_HORIZON, replan_threshold=FAKE_T))
    try:
        res = await run_stream(f"127.0.0.1:{port}", header, lambda f: synthetic_observation(f, CAMS, FAKE_D, rng, float(f)),
                               n=5, rate_hz=None)
        text = server.metrics.text()
    finally:
        await server.stop(grace=1)
    assert res.code == grpc.StatusCode.OK, res.details
    assert "xvla_sessions 0.0" in text
