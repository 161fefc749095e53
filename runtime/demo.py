"""``xvla-demo``: the README's main job, end to end on one machine.

1. export (once, cached in ./artifacts/tiny-r1pro-v20) the seeded default bundle (the same as ``xvla-serve``'s);
2. start ``xvla-serve`` on it in a subprocess on a free loopback port and wait for health SERVING;
3. run the robot-side agent (``xvla-agent run``) with a simulated Galaxea R1Pro against it:
   a 30 Hz control loop streaming head + wrist cameras and the 23-d state for a few seconds;
4. the agent prints its control statistics (ticks, skipped/safe ticks, jitter, round trip, bytes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from xvla.runtime.serve_process import start_xvla_serve, wait_serving


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
    from xvla.runtime.artifacts import DEFAULT_PRESET

    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help="seeded preset to export and serve (R1Pro 23-d actions, task + skill prompts; the xvla-serve default)")
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
    server = start_xvla_serve(bundle, providers=args.providers, metrics=False, extra_args=("--mode", args.mode))
    console.print(f"[bold]server[/]: xvla-serve --bundle {bundle} on {server.target} ({args.providers})")
    with server:
        with console.status("waiting for health SERVING (engines loading + warm-up) ..."):
            wait_serving(server, 180.0)
        return run_agent(server.target, args.seconds, args.rate, args.mode, console)

if __name__ == "__main__":
    sys.exit(main())
