"""Soak: N simulated robots at 30 Hz against one xvla-serve for a long time; every ``--sample`` seconds the
server's RSS, open fds and threads and the robots' tick latency p50/p99 over the window.

    python -m xvla.benchmarks.soak                       # 16 robots, 10 minutes (the default)
    python -m xvla.benchmarks.soak --minutes 60          # the documented 1 h run
    python -m xvla.benchmarks.soak --robots 4 --minutes 2 --json soak.json

Robots are lightweight stream clients (raw RGB frames at the model's camera size, one asyncio task
each, all in this process), so the figure measures the server, not 16 image encoders. Like the agent
(``--max-in-flight``, default 2) a robot has at most two observations unanswered: a tick that finds
two is not sent (it runs from the robot's plan), so an overloaded server answers fewer ticks on time
instead of every tick later. Pass/fail as in the issue: RSS growth < 5 % (first sample -> last), fds
and threads flat, zero lost sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import psutil

from xvla.benchmarks.stream_client import run_stream, synthetic_observation
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.artifacts import ensure_bundle
from xvla.runtime.serve_process import start_xvla_serve, wait_serving


def _thread_names(pid: int) -> Counter:
    names: Counter = Counter()
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names[comm.read_text().strip().rstrip("0123456789_-")] += 1
        except OSError:  # the thread ended while we looked
            pass
    return names


def _changes(first: Counter, last: Counter) -> dict[str, dict[str, int]]:
    return {"started": dict(last - first), "ended": dict(first - last)}


async def soak(target: str, pid: int, robots: int, seconds: float, sample_s: float, rate: float,
               max_in_flight: int | None = 2) -> dict:
    proc = psutil.Process(pid)
    async with grpc.aio.insecure_channel(target) as ch:
        desc = await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=30)
    pdim = desc.action_space.accepted_proprio_dims[0]
    window: list[float] = []
    sources: dict[str, int] = {}
    samples: list[dict] = []
    n = int(seconds * rate)

    def on_tick(t) -> None:
        window.append(t.latency_ms)
        name = pb.ActionSource.Name(t.source)
        sources[name] = sources.get(name, 0) + 1

    async def robot(i: int):
        rng = np.random.default_rng(i)
        pool = [synthetic_observation(0, desc.cameras, pdim, rng) for _ in range(4)]

        def make(f: int) -> pb.Observation:
            o = pb.Observation()
            o.CopyFrom(pool[f % 4])
            o.frame_index = f
            return o
        header = pb.SessionHeader(task_id=int(desc.tasks[0].id) if desc.tasks else -1, robot_id=f"soak-{i}",
                                  control_rate_hz=rate)
        return await run_stream(target, header, make, n=n, rate_hz=rate, on_tick=on_tick, max_in_flight=max_in_flight)

    async def sampler():
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(sample_s)
            lat, window[:] = list(window), []
            samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                            "fds": proc.num_fds(), "threads": proc.num_threads(), "ticks": len(lat),
                            "answered_pct": round(100.0 * len(lat) / (robots * rate * sample_s), 1),
                            "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat else None,
                            "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None})
            print(json.dumps(samples[-1]), flush=True)

    names_first = _thread_names(pid)
    s = asyncio.ensure_future(sampler())
    results = await asyncio.gather(*(robot(i) for i in range(robots)))
    s.cancel()
    lost = [r.code.name for r in results if r.code != grpc.StatusCode.OK or len(r.ticks) + r.skipped != n]
    first, last = (samples[0], samples[-1]) if samples else ({}, {})
    return {
        "robots": robots, "rate_hz": rate, "seconds": seconds, "max_in_flight": max_in_flight,
        "samples": samples, "sources": sources, "ticks": robots * n,
        "skipped_ticks": sum(r.skipped for r in results),
        "lost_sessions": len(lost), "lost_codes": lost,
        "rss_growth_pct": round(100.0 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"], 2) if samples else None,
        "fds_first_last": [first.get("fds"), last.get("fds")], "threads_first_last": [first.get("threads"), last.get("threads")],
        "p99_first_last_ms": [first.get("p99_ms"), last.get("p99_ms")],
        # threads by name (the numbered part dropped) that came or went between the start and the end
        "thread_changes": _changes(names_first, _thread_names(pid)),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xvla.benchmarks.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="default: ARTIFACTS/tiny-r1pro (exported once)")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--robots", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--max-in-flight", type=int, default=2, help="unanswered observations per robot (0: send every tick)")
    ap.add_argument("--log", type=Path, help="the server's log (default: ARTIFACTS/soak-serve.log)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    bundle = a.bundle or ensure_bundle("tiny-r1pro", a.artifacts)
    server = wait_serving(start_xvla_serve(bundle, a.log or a.artifacts / "soak-serve.log", metrics=False,
                                           extra_args=("--max-sessions", str(max(64, a.robots)))), timeout=600)
    try:
        out = asyncio.run(soak(server.target, server.proc.pid, a.robots, a.minutes * 60, a.sample, a.rate,
                               a.max_in_flight or None))
    finally:
        server.proc.terminate()
        server.proc.wait(30)
    out["command"] = " ".join(["python -m xvla.benchmarks.soak", *(argv if argv is not None else sys.argv[1:])])
    text = json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=2)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    ok = out["lost_sessions"] == 0 and (out["rss_growth_pct"] or 0) < 5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
