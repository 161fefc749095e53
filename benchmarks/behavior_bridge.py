"""Per-step latency through the BEHAVIOR bridge for each evaluator scenario (client-side, wall clock).

    HF_HUB_OFFLINE=1 .venv/bin/python -m xvla.benchmarks.behavior_bridge --steps 100

Starts ``xvla-serve`` on the embedded default bundle (exported once into ./artifacts) and
``xvla-agent bridge behavior --num-envs 3`` as separate processes, as deployed, then drives them
with the evaluator-faithful clients of ``tests/support/behavior_clients.py`` (run from the
repository checkout). Per scenario: p50/p99 of one evaluator step (``act`` for a single env,
one ``MultiWebsocketPolicy.forward`` over all envs), plus for chunk replay the p50/p99 of the
steps that sent a request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs)
    return {"n": len(xs), "p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2)}


def scenarios(port: int, ports: list[int], steps: int) -> list[dict]:
    from tests.support.behavior_clients import EvaluatorClient, MultiEnvClient, observation

    out = []
    for name, year, size, depth in [("2025 224x224 RGBA, 256-d", 2025, "224", False),
                                    ("2025 full-res RGBA (720/480), 256-d", 2025, "full", False),
                                    ("2026 DefaultWrapper 224x224, 61-d", 2026, "224", False),
                                    ("2026 RGBDFullResWrapper 720/480 + depth, 61-d", 2026, "full", True)]:
        c = EvaluatorClient("127.0.0.1", port, year)
        c.reset()
        obs = [observation(year, size, seed=k, depth=depth) for k in range(8)]
        c.act(obs[0])  # the session's first chunk (cold start) is not a steady-state step
        lat = []
        for k in range(steps):
            t = time.perf_counter()
            c.act(obs[k % 8])
            lat.append((time.perf_counter() - t) * 1e3)
        c.close()
        out.append({"scenario": name, "step_ms": _pct(lat)})
    c = EvaluatorClient("127.0.0.1", port, 2026, action_chunk_size=10)
    obs = [observation(2026, "full", seed=k, depth=True) for k in range(8)]
    c.act(obs[0])
    lat, req = [], []
    for k in range(steps):
        n0 = c.requests
        t = time.perf_counter()
        c.act(obs[k % 8])
        dt = (time.perf_counter() - t) * 1e3
        lat.append(dt)
        if c.requests > n0:
            req.append(dt)
    c.close()
    out.append({"scenario": "2026 RGBD full-res, chunk replay K=10", "step_ms": _pct(lat), "request_ms": _pct(req)})
    m = MultiEnvClient("127.0.0.1", ports)
    m.reset()
    obs = [[observation(2026, "224", seed=10 * k + i) for i in range(len(ports))] for k in range(4)]
    m.forward(obs[0])
    lat = []
    for k in range(steps):
        t = time.perf_counter()
        m.forward(obs[k % 4])
        lat.append((time.perf_counter() - t) * 1e3)
    m.close()
    out.append({"scenario": f"2026 {len(ports)} envs on {len(ports)} ports (224, 61-d), one forward()", "step_ms": _pct(lat)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=3)
    p.add_argument("--target", default=None, help="a running policy service (default: start xvla-serve on the default)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from xvla.benchmarks.servers import serve_default_unless
    from xvla.runtime.serve_process import free_port

    target, server = serve_default_unless(a.target)
    port = free_port()
    bridge = subprocess.Popen([sys.executable, "-m", "xvla.agents.cli", "bridge", "behavior", "--target", target,
                               "--host", "127.0.0.1", "--port", str(port), "--num-envs", str(a.num_envs)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        rows = scenarios(port, [port + i for i in range(a.num_envs)], a.steps)
    finally:
        bridge.terminate()
        bridge.wait(10)
        if server is not None:
            server.stop()
    for r in rows:
        extra = f"  (steps with a request: p50 {r['request_ms']['p50']} p99 {r['request_ms']['p99']} ms, n={r['request_ms']['n']})" if "request_ms" in r else ""
        print(f"{r['scenario']:<62} p50 {r['step_ms']['p50']:8.2f} ms  p99 {r['step_ms']['p99']:8.2f} ms{extra}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
