"""The robot-side agent's own work per tick at 30 Hz with R1Pro frames (720x720 head, 2x 480x480 wrists),
for each way of sending frames (``--frames original | bicubic | numpy``).

    HF_HUB_OFFLINE=1 .venv/bin/python -m xvla.benchmarks.agent_frames --seconds 10 [--target HOST:PORT]

Without ``--target`` it starts ``xvla-serve`` on the embedded default bundle (exported once into
./artifacts). Per mode it runs ``xvla-agent``'s ControlLoop with the simulated R1Pro and reports:

- ``agent_work_ms``: the loop thread's work in a tick without the robot's own read/apply and
  without waiting for the answer (choosing the action, bookkeeping, handing the frame over);
- ``encode_ms``: the encoder thread's work per frame (frame checks, resize if any, protobuf);
- ``agent_total_p99`` = p99(agent_work) + p99(encode), an upper bound of the agent's work per tick
  (wall clock: on a shared machine this includes being preempted), and the same from the threads'
  CPU time (``time.thread_time``: the work itself);
- wire bytes per frame and the control statistics (fresh/plan/safe ticks, rtt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from xvla.agents.client import ClientConfig, PolicyClient
from xvla.agents.control_loop import ControlLoop, LoopConfig, default_header
from xvla.agents.sim_r1pro import SimR1Pro


def run_mode(target: str, mode: str, seconds: float, task_id: int) -> dict:
    with PolicyClient(ClientConfig([target])) as client:
        loop = ControlLoop(SimR1Pro(), client, default_header(30.0, task_id=task_id), LoopConfig(rate_hz=30.0, frames=mode))
        st = loop.run(seconds=seconds)
    s = st.summary()
    return {"frames": mode, "ticks": s["ticks"], "fresh": s["fresh_ticks"], "plan": s["plan_ticks"], "safe": s["safe_ticks"],
            "agent_work_ms": s["agent_work_ms"], "encode_ms": s["encode_ms"],
            "agent_cpu_ms": s["agent_cpu_ms"], "encode_cpu_ms": s["encode_cpu_ms"],
            "agent_total_p99_ms": round(s["agent_work_ms"]["p99"] + s["encode_ms"]["p99"], 3),
            "agent_total_cpu_p99_ms": round(s["agent_cpu_ms"]["p99"] + s["encode_cpu_ms"]["p99"], 3),
            "wire_bytes_per_frame": s["wire_bytes_per_frame"], "rtt_ms": s["rtt_ms"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=None)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--modes", default="original,bicubic,numpy")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from xvla.benchmarks.servers import serve_default_unless

    target, server = serve_default_unless(a.target)
    try:
        with PolicyClient(ClientConfig([target])) as c:
            tasks = list(c.describe().tasks)
        rows = [run_mode(target, m, a.seconds, tasks[0].id if tasks else -1) for m in a.modes.split(",")]
    finally:
        if server is not None:
            server.stop()
    for r in rows:
        print(f"frames={r['frames']:<8} agent_work p50 {r['agent_work_ms']['p50']:.3f} p99 {r['agent_work_ms']['p99']:.3f} ms | "
              f"encode p50 {r['encode_ms']['p50']:.3f} p99 {r['encode_ms']['p99']:.3f} ms | total p99 <= {r['agent_total_p99_ms']:.2f} ms | "
              f"CPU: loop p99 {r['agent_cpu_ms']['p99']:.3f} encode p50 {r['encode_cpu_ms']['p50']:.3f} p99 {r['encode_cpu_ms']['p99']:.3f} "
              f"total p99 <= {r['agent_total_cpu_p99_ms']:.2f} ms | "
              f"wire {r['wire_bytes_per_frame']:,} B/frame | ticks {r['ticks']} fresh {r['fresh']} plan {r['plan']} safe {r['safe']} | "
              f"rtt p50 {r['rtt_ms'].get('p50', float('nan')):.1f} ms")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
