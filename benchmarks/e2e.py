"""End to end through our gRPC service: observation -> chunk (Infer) and observation -> tick action (Stream).

The server runs in its own process (``xvla-serve``); the client times each request from the
moment it starts *serialising* the observation until the decoded answer is in hand, so
protobuf encoding/decoding on both sides, gRPC over loopback, validation, image decoding,
preprocessing and inference are all inside the number. ``overhead`` is the round trip minus
the server's own compute (``StageTimings.total_ms``).

Stream ticks are reported by source: ``QUEUE`` ticks answer from the planned queue (no
inference on their path: this is the per-observation latency a robot sees while chunks are
planned in the background), ``FIRST_CHUNK`` waits for the first chunk, ``STARVED``/``HOLD``
are starved ticks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from xvla.benchmarks.observations import CAMERAS, BenchObservation, observation_pool
from xvla.benchmarks.stats import Distribution
from xvla.core.embodiments.r1pro import R1PRO_DOMAIN_ID


@dataclass
class E2EResult:
    preset: str
    infer: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)
    wire: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "infer": self.infer, "stream": self.stream, "wire": self.wire}


def to_pb_observation(obs: BenchObservation, frame: int):
    import time

    from xvla.core.tensors import encode_image_raw, numpy_to_tensor
    from xvla.proto import policy_pb2 as pb

    o = pb.Observation(frame_index=frame, timestamp=time.monotonic())
    for c in CAMERAS:
        o.cameras.add(name=c, image=encode_image_raw(obs.images[c]))
    o.proprio.CopyFrom(numpy_to_tensor(obs.proprio))
    return o


def run_infer(target: str, pool: list[BenchObservation], n: int, warmup: int = 2) -> dict[str, Any]:
    from xvla.benchmarks.peers.clients import OursInferClient

    client = OursInferClient(target)
    try:
        for i in range(warmup):
            client.request(pool[i % len(pool)])
        replies = [client.request(pool[i % len(pool)]) for i in range(n)]
    finally:
        client.close()
    return {
        "requests": n,
        "rtt_ms": Distribution.of([r.rtt_ms for r in replies]).to_dict(),
        "server_ms": Distribution.of([r.server_ms for r in replies]).to_dict(),
        "overhead_ms": Distribution.of([r.overhead_ms for r in replies]).to_dict(),
        "request_bytes": int(np.mean([r.request_bytes for r in replies])),
        "response_bytes": int(np.mean([r.response_bytes for r in replies])),
        "rtt_samples_ms": [round(r.rtt_ms, 3) for r in replies],
    }


def run_stream(target: str, pool: list[BenchObservation], n: int, rate_hz: float = 30.0) -> dict[str, Any]:
    from xvla.benchmarks.stream_client import run_stream as stream
    from xvla.proto import policy_pb2 as pb

    prebuilt = [to_pb_observation(o, 0) for o in pool]  # time the service, not numpy

    def make(frame: int):
        o = pb.Observation()
        o.CopyFrom(prebuilt[frame % len(prebuilt)])
        o.frame_index = frame
        return o

    header = pb.SessionHeader(robot_id="bench-e2e", task_id=-1, domain_id=R1PRO_DOMAIN_ID, control_rate_hz=rate_hz)
    res = asyncio.run(stream(target, header, make, n=n, rate_hz=rate_hz))
    if res.code.name != "OK":
        raise RuntimeError(f"stream failed: {res.code.name} {res.details}")
    by_source: dict[str, list[float]] = {}
    for t in res.ticks:
        by_source.setdefault(pb.ActionSource.Name(t.source), []).append(t.latency_ms)
    replies = [t.reply for t in res.ticks]
    with_chunk = [r.ByteSize() for r in replies if r.HasField("chunk") and r.chunk.shape]
    without = [r.ByteSize() for r in replies if not (r.HasField("chunk") and r.chunk.shape)]
    timings = [r.timings.total_ms for r in replies if r.HasField("timings") and r.timings.total_ms > 0]
    return {
        "ticks": len(res.ticks), "rate_hz": rate_hz, "starved_ticks": res.starved,
        "tick_ms_by_source": {k: Distribution.of(v).to_dict() for k, v in by_source.items()},
        "queue_tick_samples_ms": [round(x, 3) for x in by_source.get("QUEUE", [])],
        "chunks": len(timings),
        "chunk_total_ms": Distribution.of(timings).to_dict(),
        "reply_bytes_with_chunk": int(np.mean(with_chunk)) if with_chunk else None,
        "reply_bytes_without_chunk": int(np.mean(without)) if without else None,
        "observation_bytes": pb.StreamRequest(observation=prebuilt[0]).ByteSize(),
    }


def wire_bytes(proprio_dim: int) -> dict[str, Any]:
    """Observation payload bytes at the model's image size (what our agent sends) and at native camera sizes."""
    from xvla.proto import policy_pb2 as pb

    out = {}
    for label, size in (("model_size_224", (224, 224)), ("native_720_480", None)):
        obs = observation_pool(1, proprio_dim, size=size, seed=7)[0]
        out[label] = {"stream_observation": pb.StreamRequest(observation=to_pb_observation(obs, 1)).ByteSize(),
                      "raw_pixels": int(sum(im.nbytes for im in obs.images.values()))}
    return out


def server_tick_means(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) of the server's own tick histogram per source (receive -> reply sent)."""
    from xvla.benchmarks.servers import metric_value

    out = {}
    for src in ("QUEUE", "FIRST_CHUNK", "STARVED", "HOLD"):
        label = f'source="{src}"'
        out[src] = (metric_value(metrics_text, "xvla_tick_seconds_sum", label),
                    metric_value(metrics_text, "xvla_tick_seconds_count", label))
    return out


def run_e2e(preset: str, target: str, proprio_dim: int, infer_requests: int, stream_ticks: int,
            pool_size: int = 8, seed: int = 0, metrics: Optional[Callable[[], str]] = None) -> E2EResult:
    """Infer, then Stream. With ``metrics`` (the server's /metrics text), the Stream result also carries the
    server-side tick time per source, which separates time in the server from time queued in transport."""
    pool = observation_pool(pool_size, proprio_dim, seed=seed)
    infer = run_infer(target, pool, infer_requests)
    before = server_tick_means(metrics()) if metrics else None
    stream = run_stream(target, pool, stream_ticks)
    if metrics and before is not None:
        after = server_tick_means(metrics())
        stream["server_tick_ms_mean"] = {
            src: round(1000.0 * (after[src][0] - before[src][0]) / (after[src][1] - before[src][1]), 3)
            for src in after if after[src][1] > before[src][1]}
    return E2EResult(preset, infer=infer, stream=stream, wire=wire_bytes(proprio_dim))


def infer_only_summary(res: Optional[E2EResult]) -> Optional[dict[str, Any]]:
    return None if res is None else {k: v for k, v in res.infer.items() if k != "rtt_samples_ms"}
