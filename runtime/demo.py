"""``xvla-demo``: the README's main job, end to end on one machine.

1. export (once, cached in ./artifacts/tiny) the tiny seeded default bundle;
2. start ``xvla-serve`` on it in a subprocess on a free loopback port and wait for health SERVING;
3. drive it like a robot: one streaming session, observations at 30 Hz for a few seconds
   (xvla.runtime.stream_client, the small stand-in for the real robot agent);
4. print per-tick latency and starved ticks each second, then a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xvla.proto import policy_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_serving(target: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"xvla-serve exited with code {proc.returncode}")
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING after {timeout:.0f} s")


async def drive(target: str, seconds: float, rate: float, mode: str, console) -> int:
    from xvla.runtime.stream_client import describe, run_stream, synthetic_observation

    desc = await describe(target)
    proprio_dim = desc.action_space.accepted_proprio_dims[0] if desc.action_space.accepted_proprio_dims else desc.action_space.dim
    rng = np.random.default_rng(0)
    n = int(round(seconds * rate))
    header = pb.SessionHeader(robot_id="xvla-demo", task_id=0 if desc.tasks else -1,
                              instruction="pick up the red cup and place it on the plate", control_rate_hz=rate,
                              execution=pb.ExecutionSettings(mode=pb.ExecutionMode.Value(mode.upper())))
    console.print(f"[bold]policy[/]: {desc.model_name}  action dim {desc.action_space.dim} x horizon {desc.horizon}, "
                  f"cameras {[c.name for c in desc.cameras]} at {desc.cameras[0].height}x{desc.cameras[0].width}, "
                  f"engines {sorted({e.provider for e in desc.engines})}")
    console.print(f"[bold]robot[/]: 1 session, {n} observations at {rate:g} Hz, mode {mode}")
    window: list = []

    def on_tick(t) -> None:
        window.append(t)
        if len(window) >= rate:
            lat = [x.latency_ms for x in window]
            starved = sum(x.source in (pb.STARVED, pb.HOLD) for x in window)
            r = window[-1].reply
            console.print(f"  frame {t.frame:5d}  latency p50 {np.percentile(lat, 50):6.2f} ms  p99 "
                          f"{np.percentile(lat, 99):6.2f} ms  max {max(lat):6.2f} ms  starved {starved}  "
                          f"queue {r.queue_depth:2d}  chunk {r.chunk_id}" + (f"  skill {r.skill}" if r.skill else ""))
            window.clear()

    pool = [synthetic_observation(0, desc.cameras, proprio_dim, rng) for _ in range(8)]  # camera frames

    def observe(frame: int) -> pb.Observation:  # the robot's sensors: a fresh message per tick, pre-rendered pixels
        obs = pb.Observation()
        obs.CopyFrom(pool[frame % len(pool)])
        obs.frame_index = frame
        return obs

    res = await run_stream(target, header, observe, n=n, rate_hz=rate, on_tick=on_tick)
    if res.code.name != "OK":
        console.print(f"[red]stream ended with {res.code.name}: {res.details}")
        return 1
    in_order = [t.frame for t in res.ticks] == list(range(n))
    from rich.table import Table

    table = Table(title="xvla-demo summary", show_header=False)
    table.add_row("observations / actions", f"{n} / {len(res.ticks)}" + (" (in order)" if in_order else " [red](OUT OF ORDER)"))
    p = res.latency_percentiles((50, 90, 99))
    table.add_row("tick latency, all (p50 / p90 / p99)", f"{p[0]:.2f} / {p[1]:.2f} / {p[2]:.2f} ms")
    q = res.latency_percentiles((50, 99), sources=(pb.QUEUE,))
    table.add_row("tick latency, from queue (p50 / p99)", f"{q[0]:.2f} / {q[1]:.2f} ms")
    table.add_row("starved ticks", str(res.starved))
    sources = {pb.ActionSource.Name(s): sum(t.source == s for t in res.ticks) for s in {t.source for t in res.ticks}}
    table.add_row("reply sources", ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
    timed = [t.reply.timings for t in res.ticks if t.reply.HasField("timings")]
    if timed:
        mean = {k: float(np.mean([getattr(x, k) for x in timed])) for k in
                ("preprocess_ms", "vlm_ms", "denoise_ms", "decode_ms", "queue_wait_ms", "total_ms")}
        table.add_row(f"chunks ({len(timed)}), mean ms",
                      "  ".join(f"{k[:-3]} {v:.1f}" for k, v in mean.items()))
    console.print(table)
    return 0 if in_order and len(res.ticks) == n else 1


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog="xvla-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=30.0, help="robot control rate, Hz")
    p.add_argument("--bundle", type=Path, help="serve this bundle instead of the tiny default")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--mode", choices=["temporal_ensemble", "receding_horizon", "rtc"], default="temporal_ensemble")
    p.add_argument("--providers", default="cpu")
    p.add_argument("--server", help="drive an already running server (host:port) instead of starting one")
    args = p.parse_args(argv)
    console = Console()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.server:
        return asyncio.run(drive(args.server, args.seconds, args.rate, args.mode, console))

    bundle = args.bundle
    if bundle is None:
        from xvla.runtime.artifacts import ensure_bundle

        with console.status(f"exporting / checking the {args.preset} bundle in {args.artifacts}/ ..."):
            bundle = ensure_bundle(args.preset, args.artifacts)
    port = free_port()
    target = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "xvla.runtime.cli", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--providers", args.providers, "--log-level", "warning", "--mode", args.mode]
    console.print(f"[bold]server[/]: {' '.join(cmd[2:])}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        with console.status("waiting for health SERVING (engines loading + warm-up) ..."):
            asyncio.run(wait_serving(target, 180.0, proc))
        return asyncio.run(drive(target, args.seconds, args.rate, args.mode, console))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
