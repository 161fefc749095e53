"""Measures the policy service's own overhead per observation (loopback, tiny model).

    python -m xvla.benchmarks.overhead [--bundle DIR] [--n 900] [--rate 30]

What is measured: a robot-like client streams observations (3 cameras as raw RGB8 at the
model's size, 23/20-d proprio) to ``xvla-serve`` running in its own process on 127.0.0.1, and
times each observation from the moment it is handed to gRPC until its action is back.
Replies served from the planned queue (source QUEUE) involve no inference on their path, so
their round-trip time IS the service's overhead per observation: protobuf (de)serialisation,
gRPC over loopback, input validation, the frame-indexed plan lookup / ensembling, and reply
building, while chunks are being planned in the background on the same CPU (as in
production). The first tick (FIRST_CHUNK) and STARVED ticks are reported separately.
It also reports the server-side tick time (``xvla_tick_seconds`` histogram, mean) from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np

from xvla.proto import policy_pb2 as pb


async def measure(target: str, n: int, rate: float, mode: str, jpeg: bool = False) -> dict:
    from xvla.benchmarks.stream_client import describe, run_stream, synthetic_observation

    desc = await describe(target)
    dim = desc.action_space.accepted_proprio_dims[0] if desc.action_space.accepted_proprio_dims else desc.action_space.dim
    rng = np.random.default_rng(0)
    pool = [synthetic_observation(0, desc.cameras, dim, rng) for _ in range(8)]  # pre-built: time the service, not numpy
    if jpeg:
        import cv2

        for o in pool:
            for cam in o.cameras:
                img = np.frombuffer(cam.image.data, np.uint8).reshape(cam.image.height, cam.image.width, 3)
                cam.image.CopyFrom(pb.Image(encoding=pb.JPEG, data=cv2.imencode(".jpg", img)[1].tobytes()))

    def make(f: int) -> pb.Observation:
        o = pb.Observation()
        o.CopyFrom(pool[f % len(pool)])
        o.frame_index = f
        return o

    header = pb.SessionHeader(robot_id="overhead", task_id=0 if desc.tasks else -1, control_rate_hz=rate or 30.0,
                              execution=pb.ExecutionSettings(mode=pb.ExecutionMode.Value(mode.upper())))
    res = await run_stream(target, header, make, n=n, rate_hz=rate or None)
    if res.code.name != "OK":
        raise RuntimeError(f"stream failed: {res.code.name} {res.details}")
    queue = [t.latency_ms for t in res.ticks if t.source == pb.QUEUE]
    other = [t.latency_ms for t in res.ticks if t.source != pb.QUEUE]
    obs_bytes = pool[0].ByteSize()
    out = {
        "observations": n, "rate_hz": rate, "mode": mode, "images": "jpeg" if jpeg else "raw_rgb8",
        "observation_bytes": obs_bytes,
        "queue_ticks": len(queue),
        "overhead_ms_p50": float(np.percentile(queue, 50)), "overhead_ms_p90": float(np.percentile(queue, 90)),
        "overhead_ms_p99": float(np.percentile(queue, 99)), "overhead_ms_max": float(np.max(queue)),
        "non_queue_ticks": len(other), "non_queue_ms": [round(x, 2) for x in other[:10]],
        "starved_ticks": res.starved,
    }
    timed = [t.reply.timings for t in res.ticks if t.reply.HasField("timings")]
    if timed:
        out["chunk_total_ms_mean"] = float(np.mean([t.total_ms for t in timed]))
    return out


def server_tick_mean_ms(metrics_port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    s = c = None
    for line in text.splitlines():
        if line.startswith('xvla_tick_seconds_sum{source="QUEUE"}'):
            s = float(line.split()[-1])
        if line.startswith('xvla_tick_seconds_count{source="QUEUE"}'):
            c = float(line.split()[-1])
    return 1000.0 * s / c if s is not None and c else None


def main(argv: list[str] | None = None) -> int:
    from xvla.runtime.serve_process import start_xvla_serve, wait_serving

    p = argparse.ArgumentParser(prog="python -m xvla.benchmarks.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--n", type=int, default=900, help="observations (900 = 30 s at 30 Hz)")
    p.add_argument("--rate", type=float, default=30.0, help="Hz; 0 = as fast as replies come back (lock-step)")
    p.add_argument("--mode", default="temporal_ensemble", choices=["temporal_ensemble", "receding_horizon", "rtc"])
    p.add_argument("--providers", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--jpeg", action="store_true", help="send the camera frames as JPEG instead of raw RGB8")
    args = p.parse_args(argv)
    bundle = args.bundle
    if bundle is None:
        from xvla.runtime.artifacts import ensure_bundle

        bundle = ensure_bundle("tiny", args.artifacts)
    with start_xvla_serve(bundle, providers=args.providers, threads=args.threads) as server:
        wait_serving(server, 180.0)
        result = asyncio.run(measure(server.target, args.n, args.rate, args.mode, args.jpeg))
        result["server_tick_ms_mean"] = server_tick_mean_ms(server.metrics_port)
        print(json.dumps(result, indent=2))
        return 0

if __name__ == "__main__":
    sys.exit(main())
