"""A minimal streaming client: one session, observations at a fixed rate, one reply per observation.

This is the demo's and the tests' robot stand-in (the real robot side is xvla.agents). It
writes and reads concurrently, as a robot does: observations go out on the robot's clock
whether or not the previous reply is back, so a slow server shows up as latency and
STARVED replies, not as a slower robot.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import grpc
import numpy as np

from xvla.core.tensors import encode_image_raw, numpy_to_tensor, tensor_to_numpy
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc


@dataclass
class Tick:
    frame: int
    latency_ms: float  # observation sent -> its action received
    source: int
    action: np.ndarray
    reply: pb.ActionReply
    sent_s: float = float("nan")  # time.perf_counter() when the observation went out / its reply came in
    recv_s: float = float("nan")


@dataclass
class StreamResult:
    accepted: pb.SessionAccepted | None
    ticks: list[Tick] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    skipped: int = 0  # ticks not sent because ``max_in_flight`` observations were unanswered

    @property
    def starved(self) -> int:
        return sum(t.source in (pb.STARVED, pb.HOLD) for t in self.ticks)

    def latency_percentiles(self, qs: Sequence[float] = (50, 90, 99), sources: Sequence[int] | None = None) -> list[float]:
        lat = [t.latency_ms for t in self.ticks if sources is None or t.source in sources]
        return [float(np.percentile(lat, q)) for q in qs] if lat else [float("nan")] * len(qs)


def synthetic_observation(frame: int, cameras: Sequence[pb.CameraSpec], proprio_dim: int,
                          rng: np.random.Generator, proprio_value: float | None = None) -> pb.Observation:
    """Random RGB frames at each camera's model size and a proprio vector (all = ``proprio_value`` if given)."""
    obs = pb.Observation(frame_index=frame, timestamp=time.monotonic())
    for cam in cameras:
        img = rng.integers(0, 256, (cam.height, cam.width, 3), dtype=np.uint8)
        obs.cameras.add(name=cam.name, image=encode_image_raw(img))
    p = np.full(proprio_dim, proprio_value, np.float32) if proprio_value is not None else \
        rng.standard_normal(proprio_dim).astype(np.float32) * 0.1
    obs.proprio.CopyFrom(numpy_to_tensor(p))
    return obs


async def describe(target: str, timeout: float = 10.0) -> pb.DescribeResponse:
    async with grpc.aio.insecure_channel(target) as ch:
        return await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=timeout)


async def run_stream(
    target: str,
    header: pb.SessionHeader,
    make_observation: Callable[[int], pb.Observation],
    n: int,
    rate_hz: float | None = 30.0,
    start_frame: int = 0,
    on_tick: Callable[[Tick], None] | None = None,
    channel: grpc.aio.Channel | None = None,
    max_in_flight: int | None = None,
) -> StreamResult:
    """Streams ``n`` observations (frames start_frame..) at ``rate_hz`` (None: as fast as replies come back).

    ``max_in_flight``: a tick whose observation would be the (max_in_flight+1)-th unanswered one is
    skipped (counted in ``skipped``), as the agent does (``ClientConfig.max_in_flight``); None sends
    every tick, so a slow server shows up as growing latency."""
    own = channel is None
    ch = channel or grpc.aio.insecure_channel(target)
    stub = pb_grpc.PolicyServiceStub(ch)
    sent: dict[int, float] = {}
    result = StreamResult(accepted=None)
    next_ok = asyncio.Event()
    next_ok.set()

    accepted = asyncio.Event()

    async def requests():
        yield pb.StreamRequest(header=header)
        # Observations only once the session is accepted, as the agent does: a header the server
        # refuses then ends the call with that status, instead of racing a write against it
        # (grpc.aio reports the loser as INTERNAL "Internal error from Core").
        await accepted.wait()
        period = 1.0 / rate_hz if rate_hz else 0.0
        t0 = time.perf_counter()
        for i in range(n):
            if rate_hz:
                delay = t0 + i * period - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await next_ok.wait()
                next_ok.clear()
            frame = start_frame + i
            if max_in_flight is not None and len(sent) - len(result.ticks) >= max_in_flight:
                result.skipped += 1
                continue
            obs = make_observation(frame)
            sent[frame] = time.perf_counter()
            yield pb.StreamRequest(observation=obs)

    call = stub.Stream(requests())
    try:
        async for resp in call:
            if resp.WhichOneof("msg") == "accepted":
                result.accepted = resp.accepted
                accepted.set()
                continue
            r = resp.action
            t_recv, t_sent = time.perf_counter(), sent.get(r.frame_index, float("nan"))
            tick = Tick(r.frame_index, (t_recv - t_sent) * 1000.0, r.source, tensor_to_numpy(r.action, "action"), r,
                        t_sent, t_recv)
            result.ticks.append(tick)
            if on_tick is not None:
                on_tick(tick)
            next_ok.set()
            if len(result.ticks) + result.skipped >= n:
                break
        # All replies are in and the request stream has ended (half-close): wait for the server's
        # final status instead of cancelling the call, so the session is over on the server too
        # (its gauges and logs) when this returns.
        result.code = await asyncio.wait_for(call.code(), timeout=30)
        result.details = await call.details() or ""
    except grpc.aio.AioRpcError as err:
        result.code, result.details = err.code(), err.details() or ""
    finally:
        if own:
            await ch.close()
    return result
