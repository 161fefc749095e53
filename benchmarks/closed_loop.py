"""Closed loop: K simulated R1Pro agents at 30 Hz against one server; how many robots does it hold?

Each agent is a separate ``xvla-agent run --json`` process (one robot = one machine's
process: its own GIL, its own rendering of a 720x720 head and two 480x480 wrist cameras,
resizing, serialising), all started together against one ``xvla-serve``. For each K:

* starved ticks: the server's STARVED + HOLD replies, summed over agents (the first reply of
  a session, FIRST_CHUNK, is not one);
* skipped ticks (a robot's own loop fell a whole period behind), safe/plan ticks, missed
  reply deadlines, tick jitter (scheduled -> actual tick start), round trip per observation;
* chunks per second from the server's ``xvla_chunks_total`` counter;
* CPU (psutil: the server process, the agents, the whole machine) and GPU utilisation
  (NVML, when there is a GPU), sampled every 0.25 s.

K is swept upward until a run starves; with ``refine`` the gap between the last K that held
and the first that starved is bisected. ``max_robots`` is the largest K with zero starved
ticks. On a small CPU machine the agents compete with the server for the same cores, so
the number is a lower bound of what a dedicated server holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import psutil

from xvla.benchmarks.servers import ServerProcess, metric_value, process_of
from xvla.runtime.serve_process import child_env as _env


class _Sampler:
    """Samples CPU of the server, the agents and the machine, and GPU utilisation, in a thread."""

    def __init__(self, server: ServerProcess, agents: list[subprocess.Popen], period_s: float = 0.25) -> None:
        self.server, self.period = server, period_s
        self.agents = [psutil.Process(p.pid) for p in agents]
        self.samples: dict[str, list[float]] = {"server_cpu_pct": [], "agents_cpu_pct": [], "machine_cpu_pct": [],
                                                "gpu_util_pct": [], "gpu_mem_gib": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # noqa: BLE001 - no GPU / no NVML: GPU columns stay empty
            self._nvml = None

    def start(self) -> "_Sampler":
        process_of(self.server).cpu_percent(None)
        for a in self.agents:
            try:
                a.cpu_percent(None)
            except psutil.Error:
                pass
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples["server_cpu_pct"].append(process_of(self.server).cpu_percent(None))
            except psutil.Error:
                pass
            total = 0.0
            for a in self.agents:
                try:
                    total += a.cpu_percent(None)
                except psutil.Error:
                    pass
            self.samples["agents_cpu_pct"].append(total)
            self.samples["machine_cpu_pct"].append(psutil.cpu_percent(None))
            if self._nvml is not None:
                nv, h = self._nvml
                self.samples["gpu_util_pct"].append(float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
                self.samples["gpu_mem_gib"].append(nv.nvmlDeviceGetMemoryInfo(h).used / 2**30)

    def stop(self) -> dict[str, Optional[float]]:
        self._stop.set()
        self._thread.join(2)
        out: dict[str, Optional[float]] = {}
        for k, v in self.samples.items():
            out[k + "_mean"] = round(sum(v) / len(v), 1) if v else None
            out[k + "_max"] = round(max(v), 1) if v else None
        out["gpu"] = "nvml" if self._nvml is not None else "no GPU / NVML not available"
        return out


@dataclass
class FleetRun:
    robots: int
    seconds: float
    agents: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    chunks: float = 0.0
    window_s: float = 0.0
    utilisation: dict[str, Any] = field(default_factory=dict)

    @property
    def starved(self) -> int:
        return int(sum(a.get("starved_replies", 0) + a.get("server_hold_ticks", 0) for a in self.agents))

    @property
    def held(self) -> bool:
        return not self.errors and len(self.agents) == self.robots and self.starved == 0 \
            and all(a.get("ticks", 0) > 0 for a in self.agents)

    def summary(self) -> dict[str, Any]:
        def tot(key: str) -> int:
            return int(sum(a.get(key, 0) for a in self.agents))

        def agg(key: str, stat: str, fn: Callable = max) -> Optional[float]:
            vals = [a[key][stat] for a in self.agents if a.get(key, {}).get("n")]
            return round(float(fn(vals)), 3) if vals else None

        return {
            "robots": self.robots, "seconds": self.seconds, "held": self.held, "starved_ticks": self.starved,
            "ticks": tot("ticks"), "skipped_ticks": tot("skipped_ticks"), "fresh_ticks": tot("fresh_ticks"),
            "plan_ticks": tot("plan_ticks"), "safe_ticks": tot("safe_ticks"), "missed_deadlines": tot("missed_deadlines"),
            "fresh_pct": round(100.0 * tot("fresh_ticks") / max(1, tot("ticks")), 1),
            "late_replies": tot("late_replies"), "reconnects": tot("reconnects"),
            "jitter_ms_p50_mean": agg("jitter_ms", "p50", lambda v: sum(v) / len(v)),
            "jitter_ms_p99_max": agg("jitter_ms", "p99"), "jitter_ms_max": agg("jitter_ms", "max"),
            "rtt_ms_p50_mean": agg("rtt_ms", "p50", lambda v: sum(v) / len(v)), "rtt_ms_p99_max": agg("rtt_ms", "p99"),
            "chunks_per_s": round(self.chunks / self.window_s, 2) if self.window_s else None,
            "wire_bytes_per_frame": int(sum(a.get("wire_bytes_per_frame", 0) for a in self.agents) / max(1, len(self.agents))),
            "utilisation": self.utilisation, "errors": self.errors,
        }


def _parse_json_tail(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the agent's output")
    return json.loads(text[start:])


def run_fleet(server: ServerProcess, robots: int, seconds: float, extra_agent_args: tuple[str, ...] = ()) -> FleetRun:
    run = FleetRun(robots, seconds)
    before = metric_value(server.metrics_text(), "xvla_chunks_total")
    cmd = [sys.executable, "-m", "xvla.agents.cli", "run", "--target", server.target, "--seconds", str(seconds),
           "--json", *extra_agent_args]
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(robots)]
    sampler = _Sampler(server, procs).start()
    for p in procs:
        try:
            out, err = p.communicate(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            run.errors.append("agent timed out")
            continue
        try:
            run.agents.append(_parse_json_tail(out))
        except ValueError as exc:
            run.errors.append(f"agent exit {p.returncode}: {exc}: {err.strip()[-500:]}")
    run.window_s = time.monotonic() - t0
    run.utilisation = sampler.stop()
    server.check_alive()
    run.chunks = metric_value(server.metrics_text(), "xvla_chunks_total") - before
    # chunks are planned only while agents run: use the longest agent run as the window
    durations = [a.get("duration_s", 0.0) for a in run.agents]
    if durations and max(durations) > 0:
        run.window_s = max(durations)
    return run


def sweep(server: ServerProcess, sizes: tuple[int, ...], seconds: float, refine: bool = True,
          progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Runs K = sizes (ascending) until one starves, then bisects the gap when ``refine``."""
    runs: dict[int, FleetRun] = {}

    def go(k: int) -> FleetRun:
        if progress:
            progress(f"closed loop: {k} robot(s) x {seconds:g} s")
        runs[k] = run_fleet(server, k, seconds)
        return runs[k]

    last_good, first_bad = 0, None
    for k in sorted(set(sizes)):
        if go(k).held:
            last_good = k
        else:
            first_bad = k
            break
    while refine and first_bad is not None and first_bad - last_good > 1:
        mid = (last_good + first_bad) // 2
        if go(mid).held:
            last_good = mid
        else:
            first_bad = mid
    return {
        "max_robots_zero_starved": last_good,
        "first_starved_at": first_bad,
        "bounded_by_sweep": first_bad is None,  # every K held: the real limit is above the largest K tried
        "runs": [runs[k].summary() for k in sorted(runs)],
    }
