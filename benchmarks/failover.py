"""Failover across replicas, measured from the agent's own record.

Three ``xvla-serve`` processes on loopback, one ``xvla-agent run --target A --target B --target C --json``
(the simulated R1Pro at 30 Hz). Every few seconds the replica that holds the agent's session (read from
its ``xvla_sessions`` gauge) is SIGKILLed (then restarted) or SIGSTOPped (then SIGCONTed): a frozen server
must be detected by the agent's reply deadline / keepalive, never waited on. From the agent's JSON
(per-tick timeline with CLOCK_MONOTONIC times, session events) each fault gets: time from the fault to the
first FRESH tick served by another replica, and the fresh/plan/safe ticks in between.

    python -m xvla.benchmarks.failover --kills 5 --stops 5 --interval 4
    python -m xvla.benchmarks.failover --bundle artifacts/tiny-r1pro --reply-timeout 0.5 --json failover.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from xvla.runtime.artifacts import ensure_bundle
from xvla.runtime.serve_process import ServerProcess, child_env, free_port, wait_serving


def _sessions(server: ServerProcess) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=0.3) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("xvla_sessions "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _start(bundle: Path, log_dir: Path, i: int, port: int | None = None, metrics_port: int | None = None) -> ServerProcess:
    """A replica on loopback; a restarted one keeps its ports (the agent's target list is fixed)."""
    port, metrics_port = port or free_port(), metrics_port or free_port()
    cmd = [sys.executable, "-m", "xvla.runtime.cli", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(metrics_port), "--log-level", "warning", "--no-verify"]
    with open(log_dir / f"replica{i}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    return ServerProcess("xvla-serve", proc, port, metrics_port, log_dir / f"replica{i}.log")


def analyse(agent: dict, faults: list[dict]) -> list[dict]:
    t0 = agent["t0_monotonic"]
    times = np.asarray(agent["tick_t_s"]) + t0
    kinds = agent["timeline"]
    opens = [(e["t_s"] + t0, e["detail"]) for e in agent["events"] if e["event"] == "session_open"]
    ends = [(e["t_s"] + t0, e["detail"]) for e in agent["events"] if e["event"] == "session_end"]
    out = []
    for f in faults:
        tf = f["t"]
        # the first session opened on another replica after the fault, then its first FRESH tick
        nxt = next(((t, tgt) for t, tgt in opens if t > tf and tgt != f["target"]), None)
        row = {"kind": f["kind"], "victim": f["target"], "new_target": nxt[1] if nxt else None}
        end = next(((t, why) for t, why in ends if t > tf), None)
        if end is not None:  # the agent gave up on the victim: its reply deadline, or the connection's end
            row["detected_after_s"], row["detected_by"] = round(end[0] - tf, 3), end[1][:120]
        if nxt is not None:
            idx = [i for i in range(len(kinds)) if times[i] > nxt[0] and kinds[i] == "F"]
            if idx:
                row["first_fresh_after_s"] = round(float(times[idx[0]] - tf), 3)
                between = kinds[int(np.searchsorted(times, tf)):idx[0]]
                row["between"] = {"F": between.count("F"), "P": between.count("P"), "S": between.count("S")}
            row["reconnect_after_s"] = round(nxt[0] - tf, 3)
        out.append(row)
    return out


def _p(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(float(np.percentile(values, 50)), 3), "max_s": round(float(np.max(values)), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xvla.benchmarks.failover", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle to serve (default: ARTIFACTS/tiny-r1pro, exported once)")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs of the serving replica (restarted after)")
    ap.add_argument("--stops", type=int, default=5, help="SIGSTOPs of the serving replica (SIGCONT after)")
    ap.add_argument("--interval", type=float, default=4.0, help="seconds between faults")
    ap.add_argument("--reply-timeout", type=float, default=0.5, help="agent: an unanswered observation this long = dead stream")
    ap.add_argument("--keepalive", type=float, default=1.0, help="agent: HTTP/2 ping interval")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--logs", type=Path, default=Path("failover-logs"))
    a = ap.parse_args(argv)
    if a.bundle is None:  # the simulated robot is an R1Pro: a 23-d policy
        a.bundle = ensure_bundle("tiny-r1pro", a.artifacts)
    a.logs.mkdir(parents=True, exist_ok=True)
    replicas = [_start(a.bundle, a.logs, i) for i in range(a.replicas)]
    for r in replicas:
        wait_serving(r, timeout=600)
    n_faults = a.kills + a.stops
    seconds = a.interval * (n_faults + 2)
    cmd = [sys.executable, "-m", "xvla.agents.cli", "run", *sum((["--target", r.target] for r in replicas), []),
           "--seconds", str(seconds), "--json", "--reply-timeout", str(a.reply_timeout), "--keepalive", str(a.keepalive),
           "--connect-timeout", "0.5", "--backoff-max", "0.5"]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(a.logs / "agent.log", "wb"), env=child_env(), text=True)
    faults: list[dict] = []
    stopped: ServerProcess | None = None
    try:
        time.sleep(a.interval)
        plan = [k for i in range(max(a.kills, a.stops)) for k, n in (("kill", a.kills), ("stop", a.stops)) if i < n]
        for kind in plan:
            active = None
            deadline = time.monotonic() + a.interval
            while active is None and time.monotonic() < deadline:
                active = next((r for r in replicas if r is not stopped and _sessions(r) >= 1), None)
                time.sleep(0.05)
            if active is None:
                faults.append({"kind": kind, "t": time.monotonic(), "target": "?", "note": "no active replica found"})
                continue
            t = time.monotonic()
            if kind == "kill":
                active.proc.send_signal(signal.SIGKILL)
            else:
                active.proc.send_signal(signal.SIGSTOP)
            faults.append({"kind": kind, "t": t, "target": active.target})
            time.sleep(a.interval / 2)
            if stopped is not None:  # the previous freeze ends: the replica may serve again
                stopped.proc.send_signal(signal.SIGCONT)
                stopped = None
            if kind == "kill":
                i = replicas.index(active)
                active.proc.wait()
                replicas[i] = _start(a.bundle, a.logs, i, port=active.port, metrics_port=active.metrics_port)
            else:
                stopped = active
            time.sleep(a.interval / 2)
        out, _ = agent.communicate(timeout=seconds + 120)
    finally:
        if stopped is not None:
            stopped.proc.send_signal(signal.SIGCONT)
        for r in replicas:
            r.proc.kill()
            r.proc.wait()
        if agent.poll() is None:
            agent.kill()
    stats = json.loads(out)
    rows = analyse(stats, faults)
    kills = [r["first_fresh_after_s"] for r in rows if r["kind"] == "kill" and "first_fresh_after_s" in r]
    stops = [r["first_fresh_after_s"] for r in rows if r["kind"] == "stop" and "first_fresh_after_s" in r]
    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "agent": {k: stats[k] for k in ("ticks", "fresh_ticks", "plan_ticks", "safe_ticks", "skipped_ticks", "sessions",
                                        "reconnects", "connect_failures", "accounted")},
        "kill_to_first_fresh": _p(kills), "freeze_to_first_fresh": _p(stops), "faults": rows,
        "command": " ".join(["python -m xvla.benchmarks.failover", *(argv or sys.argv[1:])]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
