"""The long fuzz run: >= 10,000 gRPC messages and >= 2,000 per bridge, with a well-behaved 30 Hz stream
measured before and during the fuzz (p50/p99 latency), crashes, hangs and errors without a field name.

    python -m xvla.benchmarks.fuzz                               # fake policies (run from the repo root)
    python -m xvla.benchmarks.fuzz --bundle artifacts/tiny-r1pro # a real xvla-serve on a bundle
    python -m xvla.benchmarks.fuzz --grpc 10000 --streams 1000 --bridge 2000 --seed 0 --json out.json

The service runs in its own process (as in production: the fuzzer and the robot stand-in do not share
its GIL); the bridges run in this process against a fake 23-d R1Pro policy service process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from xvla.benchmarks.fuzzing import fuzz_grpc, fuzz_http, fuzz_websocket, fuzz_zmq, well_behaved_stream
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.serve_process import ServerProcess, child_env, free_port, start_xvla_serve, wait_serving

REPO = Path(__file__).resolve().parents[1]


def _serve_fake(port: int) -> None:
    """Child process: the runtime's fake policies (tests/runtime/fakes.py) behind the real PolicyServer."""
    import tempfile

    sys.path.insert(0, str(REPO))
    from tests.runtime.fakes import fake_factory, fake_policy
    from xvla.benchmarks.serving import serve_in_background
    from xvla.runtime.service import ServiceConfig
    from xvla.runtime.skills import RoutingTable

    root = Path(tempfile.mkdtemp()) / "fake"
    pol = fake_policy(root)
    with serve_in_background(routes=RoutingTable.single(root), policy_factory=fake_factory({"default": pol}),
                             config=ServiceConfig(batch_window_ms=1.0), port=port):
        print("READY", flush=True)
        threading.Event().wait()


def _start(cmd: list[str], name: str, port: int) -> ServerProcess:
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{name} did not start: {line!r}")
    return ServerProcess(name, proc, port, None, None)


def _pct(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"n": 0}
    return {"n": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(np.max(lat)), 2)}


async def grpc_phase(target: str, n_unary: int, n_streams: int, seed: int, good_frames: int) -> dict:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        desc = await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=10)
        code0, before = await well_behaved_stream(target, desc, n=good_frames)
        good = asyncio.ensure_future(well_behaved_stream(target, desc, n=good_frames, seed=2))
        report = await fuzz_grpc(target, n_unary, n_streams, seed=seed, deadline_s=15)
        code1, during = await good
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    out = report.summary()
    out.update(good_stream_before=dict(_pct(before), status=code0.name),
               good_stream_during=dict(_pct(during), status=code1.name),
               health_after=health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
    return out


def bridges_phase(n: int, seed: int) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.agents.helpers import LoopThread
    from xvla.agents.bridges.core import BridgeConfig
    from xvla.agents.bridges.http_act import HttpActBridge
    from xvla.agents.bridges.observations import BEHAVIOR_CAMERA_KEYS, BEHAVIOR_PROPRIO_KEY
    from xvla.agents.bridges.openpi_ws import OpenpiBridge
    from xvla.agents.bridges.zmq_bridge import ZmqBridge
    from xvla.agents.client import ClientConfig

    keys = {**BEHAVIOR_CAMERA_KEYS, "proprio": BEHAVIOR_PROPRIO_KEY}
    port = free_port()
    fake = _start([sys.executable, "-m", "tests.agents.fake_server", "--port", str(port)], "fake-r1pro", port)
    out = {}
    try:
        with LoopThread() as loop:
            for name, cls, run in (("zmq", ZmqBridge, lambda p: fuzz_zmq(p, keys, n, seed)),
                                   ("websocket", OpenpiBridge, lambda p: fuzz_websocket(p, keys, n, seed + 1)),
                                   ("http", HttpActBridge, lambda p: fuzz_http(p, n, seed + 2))):
                b = cls(ClientConfig([f"127.0.0.1:{port}"], connect_timeout_s=1.0),
                        BridgeConfig(host="127.0.0.1", port=0, max_message_bytes=8 << 20, reply_timeout_s=5))
                loop.run(b.start())
                try:
                    out[name] = run(b.port).summary()
                finally:
                    loop.run(b.stop())
        out["fake_service_alive"] = fake.proc.poll() is None
    finally:
        fake.proc.kill()
        fake.proc.wait()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xvla.benchmarks.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="fuzz a real xvla-serve on this bundle (default: fake policies)")
    ap.add_argument("--grpc", type=int, default=10_000, help="unary Infer cases (raw bytes)")
    ap.add_argument("--streams", type=int, default=1_000, help="fuzzed Stream sequences (1-7 messages each)")
    ap.add_argument("--bridge", type=int, default=2_000, help="cases per bridge (0: skip the bridges)")
    ap.add_argument("--good-frames", type=int, default=300, help="frames of the well-behaved 30 Hz stream")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--serve-fake", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_fake is not None:
        _serve_fake(a.serve_fake)
        return 0
    t0 = time.perf_counter()
    if a.bundle:
        server = wait_serving(start_xvla_serve(a.bundle, Path("fuzz-serve.log"), metrics=False), timeout=600)
    else:
        port = free_port()
        server = _start([sys.executable, "-m", "xvla.benchmarks.fuzz", "--serve-fake", str(port)], "xvla-serve(fake)", port)
    try:
        figures = {"grpc": asyncio.run(grpc_phase(server.target, a.grpc, a.streams, a.seed, a.good_frames))}
        figures["grpc"]["server_alive"] = server.proc.poll() is None
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    if a.bridge:
        figures["bridges"] = bridges_phase(a.bridge, a.seed)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(figures, indent=2, default=str)
    print(text)
    if a.json:
        a.json.write_text(text)
    g = figures["grpc"]
    ok = g["server_alive"] and g["hangs"] == 0 and g["unacceptable_codes"] == 0 and g["errors_without_field"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
