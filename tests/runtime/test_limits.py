"""Resource bounds of the gRPC service: session slots from stream open, header/idle timeouts, keepalive,
caps checked before the work (instruction length, tensor rank/elements, decoded image size from the
header), undecodable messages, bounded error details. Each reproduces a defect seen under attack."""

from __future__ import annotations

import asyncio
import io
import platform
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.runtime.fakes import FAKE_CAMERAS, FAKE_D, fake_factory, fake_policy
from xvla.benchmarks.serving import serve_in_background
from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.core import limits
from xvla.core.errors import InputError
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.service import ServiceConfig
from xvla.runtime.skills import RoutingTable

CAMS = [pb.CameraSpec(name=n, height=8, width=8) for n in FAKE_CAMERAS]
HEADER = pb.SessionHeader(task_id=-1)


def _server(tmp_path, **cfg):
    pol = fake_policy(tmp_path / "fake")
    return serve_in_background(routes=RoutingTable.single(tmp_path / "fake"), policy_factory=fake_factory({"default": pol}),
                               config=ServiceConfig(batch_window_ms=1.0, **cfg))


def _obs(f: int) -> pb.Observation:
    return synthetic_observation(f, CAMS, FAKE_D, np.random.default_rng(f), proprio_value=float(f))


def _jpeg(h: int = 8, w: int = 8, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(h: int = 8, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _declare(data: bytes, h: int, w: int) -> bytes:
    """The same file with a forged declared size (a decompression bomb's header)."""
    b = bytearray(data)
    if data.startswith(limits.PNG_MAGIC):
        b[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
        return bytes(b)
    i = 2
    while True:
        marker, seg = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC2):
            b[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
            return bytes(b)
        i += 2 + seg


async def _stream_status(ch, requests) -> tuple[grpc.StatusCode, str, int]:
    """(code, details, replies) of one Stream fed by ``requests`` (an async generator)."""
    n = 0
    try:
        async for _ in pb_grpc.PolicyServiceStub(ch).Stream(requests, timeout=20):
            n += 1
        return grpc.StatusCode.OK, "", n
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or "", n


# ------------------------------------------------------------------------------ sessions and timeouts
async def test_session_slots_are_taken_at_stream_open_not_at_header(tmp_path):
    async with _server(tmp_path, max_sessions=2, header_timeout_s=30) as (server, port):
        release = asyncio.Event()

        async def silent():  # opens a stream, sends its header only when released
            await release.wait()
            yield pb.StreamRequest(header=HEADER)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.PolicyServiceStub(ch)
            held = [stub.Stream(silent(), timeout=20) for _ in range(2)]
            for call in held:
                await call.wait_for_connection()
            while server.service.sessions < 2:  # the two streams reached the handler
                await asyncio.sleep(0.01)

            async def refused():  # writes nothing: the limit applies at open, before any message is read
                await asyncio.Event().wait()
                yield pb.StreamRequest(header=HEADER)
            code, details, _ = await _stream_status(ch, refused())
            release.set()
            for call in held:
                call.cancel()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_sessions" in details and "2" in details


async def test_a_stream_without_header_is_closed_and_frees_its_slot(tmp_path):
    async with _server(tmp_path, max_sessions=1, header_timeout_s=0.3) as (server, port):
        async def never():
            await asyncio.sleep(30)
            yield pb.StreamRequest(header=HEADER)

        async def one():
            yield pb.StreamRequest(header=HEADER)
            yield pb.StreamRequest(observation=_obs(0))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            code, details, _ = await _stream_status(ch, never())
            after = server.service.sessions
            ok = await _stream_status(ch, one())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and details.startswith("header:")
    assert after == 0  # freed before the client saw the status
    assert ok[0] == grpc.StatusCode.OK and ok[2] == 2  # the slot is usable again


async def test_an_idle_stream_is_closed_and_frees_its_slot(tmp_path):
    async with _server(tmp_path, max_sessions=1, idle_timeout_s=0.3) as (server, port):
        async def then_silence():
            yield pb.StreamRequest(header=HEADER)
            yield pb.StreamRequest(observation=_obs(0))
            await asyncio.sleep(30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            code, details, replies = await _stream_status(ch, then_silence())
            after = server.service.sessions
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and details.startswith("observation:")
    assert "idle_timeout_s" in details and replies == 2 and after == 0


async def test_idle_keepalive_pings_do_not_earn_a_goaway(tmp_path):
    """A channel idle between sessions, pinged by the agent (every 10 s, also without calls), used to
    get GOAWAY too_many_pings from grpc's default 5-minute minimum. The server's policy accepts the
    agent's rate; here everything is scaled down (pings every 0.7 s, server minimum 0.5 s)."""
    async with _server(tmp_path, min_client_ping_interval_s=0.5) as (server, port):
        opts = [("grpc.keepalive_time_ms", 700), ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
            await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=5)
            states = [ch.get_state()]

            async def watch():
                while True:
                    await ch.wait_for_state_change(states[-1])
                    states.append(ch.get_state())
            watcher = asyncio.ensure_future(watch())
            await asyncio.sleep(4.5)  # >= 6 pings without data: the 5th would have been the GOAWAY
            watcher.cancel()
    assert states == [grpc.ChannelConnectivity.READY], states


# ------------------------------------------------------------------------------ caps before work
def _infer(**obs_changes) -> pb.InferRequest:
    obs = _obs(0)
    for k, v in obs_changes.items():
        if k == "proprio":
            obs.proprio.CopyFrom(v)
        elif k == "instruction":
            obs.instruction = v
        elif k == "image":
            obs.cameras[0].image.CopyFrom(v)
        elif k == "camera_name":
            obs.cameras[0].name = v
    return pb.InferRequest(session=HEADER, observation=obs)


CASES = {
    "rank 65": (_infer(proprio=pb.Tensor(dtype=pb.FLOAT32, shape=[1] * 65, data=b"\0" * 4)), "observation.proprio.shape"),
    "16M elements": (_infer(proprio=pb.Tensor(dtype=pb.FLOAT32, shape=[1 << 24], data=b"")), "observation.proprio.shape"),
    "huge dims product": (_infer(proprio=pb.Tensor(dtype=pb.FLOAT32, shape=[1 << 40, 1 << 40], data=b"")),
                          "observation.proprio.shape"),
    "8 MB instruction": (_infer(instruction="pick " * (8 << 18)), "observation.instruction"),
    "JPEG bomb": (_infer(image=pb.Image(encoding=pb.JPEG, data=_declare(_jpeg(), 16000, 16000))),
                  "observation.cameras[0].image"),
    "PNG bomb": (_infer(image=pb.Image(encoding=pb.PNG, data=_declare(_png(), 30000, 30000))),
                 "observation.cameras[0].image"),
    "100 KB camera name": (_infer(camera_name="x" * 100_000), "observation.cameras[0].name"),
    "15 MB header instruction": (pb.InferRequest(session=pb.SessionHeader(task_id=-1, instruction="a" * (15 << 20)),
                                                 observation=_obs(0)), "session.instruction"),
}


async def test_caps_refuse_before_the_work_and_name_the_field(tmp_path):
    async with _server(tmp_path, max_message_bytes=32 << 20) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", 32 << 20)]) as ch:
            stub = pb_grpc.PolicyServiceStub(ch)
            out = {}
            for name, (req, field) in CASES.items():
                t0 = time.perf_counter()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Infer(req, timeout=20)
                out[name] = (err.value.code(), err.value.details(), time.perf_counter() - t0)
            ok = await stub.Infer(_infer(), timeout=10)
    for name, (code, details, _) in out.items():
        field = CASES[name][1]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details[:200])
        assert details.startswith(field), (name, details[:200])
        assert len(details) <= limits.DEFAULT.max_error_chars, name
    assert ok.actions.shape


async def test_a_stream_header_with_a_huge_instruction_is_refused(tmp_path):
    async with _server(tmp_path) as (server, port):
        async def reqs():
            yield pb.StreamRequest(header=pb.SessionHeader(task_id=-1, instruction="b" * (8 << 20)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            code, details, _ = await _stream_status(ch, reqs())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("header.instruction")


async def test_undecodable_messages_are_invalid_argument_and_counted(tmp_path):
    async with _server(tmp_path) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            infer = ch.unary_unary("/xvla.policy.v1.PolicyService/Infer")  # raw bytes both ways
            stream = ch.stream_stream("/xvla.policy.v1.PolicyService/Stream")
            with pytest.raises(grpc.aio.AioRpcError) as e1:
                await infer(b"\xff\xff\xff\xff\x0f" + b"junk" * 1000, timeout=5)

            async def raw():
                yield pb.StreamRequest(header=HEADER).SerializeToString()
                yield b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field claiming ~4 GB
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as e2:
                async for r in stream(raw(), timeout=5):
                    got.append(r)
        text = server.metrics.text()
        sessions = server.service.sessions
    for e, what in ((e1, "xvla.policy.v1.InferRequest"), (e2, "xvla.policy.v1.StreamRequest")):
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("request:") and what in e.value.details() and "junk" not in e.value.details()
    assert len(got) == 1  # the session was accepted before the bad message
    assert 'xvla_errors_total{code="INVALID_ARGUMENT"} 2.0' in text
    assert sessions == 0


# ------------------------------------------------------------------------------ core/limits units
def test_image_header_sizes_are_read_without_decoding():
    assert limits.image_header_size(_jpeg(37, 53)) == (37, 53)
    assert limits.image_header_size(_jpeg(37, 53, progressive=True)) == (37, 53)
    assert limits.image_header_size(_png(21, 9)) == (21, 9)
    assert limits.image_header_size(_declare(_jpeg(), 16000, 16000)) == (16000, 16000)
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00\x01", b"\xff\xd8\x00" * 10, b"\x89PNG\r\n\x1a\n" + b"\0" * 4):
        assert limits.image_header_size(junk) is None
    with pytest.raises(InputError, match="pixels exceed"):
        limits.check_image_header(_declare(_png(), 8000, 8000), "png", "img")
    with pytest.raises(InputError, match="each side"):
        limits.check_image_header(_declare(_png(), 1, 1_000_000), "png", "img")


def test_shape_and_text_caps():
    assert limits.check_shape([2, 3], "t") == (2, 3)
    with pytest.raises(InputError, match="rank 65"):
        limits.check_shape([1] * 65, "t")
    with pytest.raises(InputError, match="negative"):
        limits.check_shape([-1], "t")
    with pytest.raises(InputError, match="elements exceed"):
        limits.check_shape([1 << 32, 1 << 32], "t")
    with pytest.raises(InputError, match="too long"):
        limits.check_instruction("é" * 3000, "instruction")  # 6000 UTF-8 bytes
    assert limits.bounded("x" * 10_000, 100).endswith("[10000 chars]") and len(limits.bounded("x" * 10_000, 100)) <= 100


def _plan_threads() -> set[threading.Thread]:  # the objects: a new thread may reuse an old one's ident
    return {t for t in threading.enumerate() if t.name.startswith("xvla-plan")}


async def test_plan_workers_exist_before_the_first_session_and_their_count_stays(tmp_path):
    """The soak's thread count crept (31 -> 33 in 10 minutes): the plan pool started a thread the
    first time more plans than ever were in flight. Now every worker exists once the service is
    ready, and sessions coming and going (here 3 at once, twice) start none."""
    before = _plan_threads()  # other tests' servers may still be winding theirs down
    async with _server(tmp_path, max_sessions=3) as (server, port):
        ours = _plan_threads() - before
        assert len(ours) == server.service.pool_size == 3 + 4
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for _ in range(2):
                results = await asyncio.gather(*(run_stream(f"127.0.0.1:{port}", HEADER, _obs, n=10, rate_hz=None,
                                                            channel=ch) for _ in range(3)))
                assert all(r.code == grpc.StatusCode.OK and len(r.ticks) == 10 for r in results)
                assert _plan_threads() - before == ours


def test_the_native_heap_is_bounded_unless_the_environment_says_otherwise(monkeypatch):
    from xvla.runtime.native_memory import bound_native_heap

    if platform.libc_ver()[0] == "glibc":
        assert bound_native_heap() == "malloc: 2 arenas, mmap above 4 MiB"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert "environment" in bound_native_heap()
