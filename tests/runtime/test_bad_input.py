"""Bad input gets INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the field, while another session keeps being served."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from tests.runtime.fakes import FAKE_CAMERAS, FAKE_D, FAKE_SKILLS, FakeAction, FakeVLM, fake_factory, fake_policy
from xvla.benchmarks.serving import serve_in_background
from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.core.tensors import numpy_to_tensor
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.service import ServiceConfig
from xvla.runtime.skills import RoutingTable

CAMS = [pb.CameraSpec(name=n, height=8, width=8) for n in FAKE_CAMERAS]
RNG = np.random.default_rng(0)


def good(frame: int) -> pb.Observation:
    return synthetic_observation(frame, CAMS, FAKE_D, RNG, proprio_value=float(frame))


def with_proprio(arr) -> pb.Observation:
    o = good(0)
    o.proprio.CopyFrom(numpy_to_tensor(np.asarray(arr)))
    return o


def mutate(fn) -> pb.Observation:
    o = good(0)
    fn(o)
    return o


HEADER = pb.SessionHeader(task_id=-1, instruction="pick up the cup")
BAD_OBSERVATIONS = [
    ("wrong proprio shape", with_proprio(np.zeros(5, np.float32)), "observation.proprio.shape"),
    ("proprio dtype", with_proprio(np.zeros(FAKE_D, np.int64)), "observation.proprio.dtype"),
    ("proprio NaN", with_proprio(np.array([0, np.nan, 0], np.float32)), "observation.proprio"),
    ("proprio Inf", with_proprio(np.array([0, 0, np.inf], np.float32)), "observation.proprio"),
    ("proprio bytes", mutate(lambda o: setattr(o.proprio, "data", b"\x00" * 5)), "observation.proprio.data"),
    ("proprio missing", mutate(lambda o: o.ClearField("proprio")), "observation.proprio"),
    ("image bytes", mutate(lambda o: setattr(o.cameras[0].image, "data", b"\x00" * 10)), "observation.cameras[0].image.data"),
    ("unknown camera", mutate(lambda o: setattr(o.cameras[1], "name", "tail")), "observation.cameras[1].name"),
    ("intrinsics NaN", mutate(lambda o: o.cameras[0].intrinsics.CopyFrom(numpy_to_tensor(np.full((3, 3), np.nan, np.float32)))),
     "observation.cameras[0].intrinsics"),
    ("extrinsics shape", mutate(lambda o: o.cameras[0].extrinsics.CopyFrom(numpy_to_tensor(np.eye(3, dtype=np.float32)))),
     "observation.cameras[0].extrinsics.shape"),
    ("corrupt jpeg", mutate(lambda o: o.cameras[0].image.CopyFrom(pb.Image(encoding=pb.JPEG, data=b"not a jpeg"))),
     "observation.cameras[0].image.data"),
]
BAD_HEADERS = [
    ("unknown task", pb.SessionHeader(task_id=7), "header.task_id"),
    ("unknown skill", pb.SessionHeader(task_id=-1, skill="juggle"), "header.skill"),
    ("unknown route", pb.SessionHeader(task_id=-1, route="nowhere"), "header.route"),
    ("domain", pb.SessionHeader(task_id=-1, domain_id=99), "header.domain_id"),
    ("execute_horizon", pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(execute_horizon=99)),
     "header.execution.execute_horizon"),
    ("ensemble_k", pb.SessionHeader(task_id=-1, execution=pb.ExecutionSettings(ensemble_k=float("nan"))),
     "header.execution.ensemble_k"),
]


async def _raw_stream(stub, messages) -> tuple[grpc.StatusCode, str]:
    async def gen():
        for m in messages:
            yield m
            await asyncio.sleep(0.01)

    try:
        async for _ in stub.Stream(gen()):
            pass
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def test_bad_input_named_and_other_session_unaffected(tmp_path):
    pol = fake_policy(tmp_path / "fake", vlm=FakeVLM(lambda i: [5.0, 0.0, 0.0], 3), action=FakeAction(delay_s=0.005),
                      skills=FAKE_SKILLS)
    cfg = ServiceConfig(max_message_bytes=64 * 1024)
    async with serve_in_background(routes=RoutingTable.single(tmp_path / "fake"), config=cfg,
                                   policy_factory=fake_factory({"default": pol})) as (server, port):
        target = f"127.0.0.1:{port}"
        # the healthy robot: 150 observations at 100 Hz during all the abuse below
        healthy = asyncio.create_task(run_stream(target, HEADER, good, n=150, rate_hz=100))
        async with grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.PolicyServiceStub(ch)
            seen = []
            for name, obs, field in BAD_OBSERVATIONS:
                first_ok = good(0)
                obs.frame_index = 1
                code, details = await _raw_stream(stub, [pb.StreamRequest(header=HEADER), pb.StreamRequest(observation=first_ok),
                                                         pb.StreamRequest(observation=obs)])
                seen.append((name, code, details))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
                assert details.startswith(field), (name, details)
            for name, header, field in BAD_HEADERS:
                code, details = await _raw_stream(stub, [pb.StreamRequest(header=header), pb.StreamRequest(observation=good(0))])
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
                assert details.startswith(field), (name, details)
            # a JPEG with a valid signature but a garbled body, on the observation a chunk is planned from
            bad_jpeg = mutate(lambda o: o.cameras[0].image.CopyFrom(pb.Image(encoding=pb.JPEG, data=b"\xff\xd8\xff" + bytes(50))))
            code, details = await _raw_stream(stub, [pb.StreamRequest(header=HEADER), pb.StreamRequest(observation=bad_jpeg)])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("observation.cameras[0].image.data"), details
            # a stream without a session header
            code, details = await _raw_stream(stub, [pb.StreamRequest(observation=good(0))])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("header"), details
            # a second header
            code, details = await _raw_stream(stub, [pb.StreamRequest(header=HEADER), pb.StreamRequest(header=HEADER)])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("header"), details
            # frame index going backwards
            code, details = await _raw_stream(stub, [pb.StreamRequest(header=HEADER), pb.StreamRequest(observation=good(5)),
                                                     pb.StreamRequest(observation=good(5))])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("observation.frame_index"), details
            # an oversize message (limit 64 KiB): gRPC's own RESOURCE_EXHAUSTED
            big = good(0)
            big.cameras[0].image.CopyFrom(pb.Image(encoding=pb.RAW_RGB8, height=128, width=256, data=bytes(128 * 256 * 3)))
            code, details = await _raw_stream(stub, [pb.StreamRequest(header=HEADER), pb.StreamRequest(observation=big)])
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            # unary Infer: bad noise shape
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Infer(pb.InferRequest(session=HEADER, observation=good(0),
                                                 noise=numpy_to_tensor(np.zeros((2, 2), np.float32))))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("noise.shape")
        res = await healthy
        errors = server.metrics.text()
    assert res.code == grpc.StatusCode.OK, res.details
    assert [t.frame for t in res.ticks] == list(range(150))
    assert all(t.action == pytest.approx(np.full(FAKE_D, t.frame)) for t in res.ticks)
    assert 'xvla_errors_total{code="INVALID_ARGUMENT"}' in errors
