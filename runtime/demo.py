"""``xvla-demo``: the README's main job, end to end on one machine.

1. export (once, cached in ./artifacts/tiny) the tiny seeded default bundle;
2. start ``xvla-serve`` on it in a subprocess on a free loopback port and wait for health SERVING;
3. run the robot-side agent (``xvla-agent run``) with a simulated Galaxea R1Pro against it:
   a 30 Hz control loop streaming head + wrist cameras and the 23-d state for a few seconds;
4. the agent prints its control statistics (ticks, skipped/safe ticks, jitter, round trip, bytes).
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


def run_agent(target: str, seconds: float, rate: float, mode: str, console) -> int:
    """Runs the robot side as its own process, as on a robot computer: ``xvla-agent run``.

    The agent (simulated R1Pro, 30 Hz control loop, held plan / safe action on late answers)
    imports nothing of the serving world; it prints its control statistics itself.
    """
    cmd = [sys.executable, "-m", "xvla.agents.cli", "run", "--target", target, "--seconds", f"{seconds:g}",
           "--rate", f"{rate:g}", "--mode", AGENT_MODES[mode]]
    console.print(f"[bold]robot[/]: simulated R1Pro, {' '.join(cmd[2:])}")
    return subprocess.run(cmd).returncode


AGENT_MODES = {"temporal_ensemble": "ensemble", "receding_horizon": "receding", "rtc": "rtc"}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog="xvla-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=30.0, help="robot control rate, Hz")
    p.add_argument("--bundle", type=Path, help="serve this bundle instead of the tiny default")
    p.add_argument("--preset", default="tiny-r1pro", help="seeded preset to export and serve (R1Pro 23-d actions)")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--mode", choices=["temporal_ensemble", "receding_horizon", "rtc"], default="temporal_ensemble")
    p.add_argument("--providers", default="cpu")
    p.add_argument("--server", help="drive an already running server (host:port) instead of starting one")
    args = p.parse_args(argv)
    console = Console()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.server:
        return run_agent(args.server, args.seconds, args.rate, args.mode, console)

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
        return run_agent(target, args.seconds, args.rate, args.mode, console)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
