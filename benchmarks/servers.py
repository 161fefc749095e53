"""Servers under test, each in its own process (as in production: the robot's client and the
policy server never share an interpreter, a GIL or an event loop)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


@dataclass
class ServerProcess:
    """A started server: its process, address and (for xvla-serve) the Prometheus port."""

    name: str
    proc: subprocess.Popen
    port: int
    metrics_port: Optional[int] = None
    log_path: Optional[Path] = None
    _ps: Optional[psutil.Process] = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ps(self) -> psutil.Process:
        if self._ps is None:
            self._ps = psutil.Process(self.proc.pid)
        return self._ps

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text()[-3000:] if self.log_path and self.log_path.exists() else ""
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{tail}")

    def metrics_text(self) -> str:
        if self.metrics_port is None:
            return ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (optionally only those whose label set contains ``labels``)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric = head.split("{", 1)[0]
        if metric != name or (labels and labels not in head):
            continue
        try:
            total += float(value)
        except ValueError:
            continue
    return total


def start_xvla_serve(bundle: Path, log_dir: Path, providers: str = "cpu", threads: int = 0,
                     extra_args: tuple[str, ...] = ()) -> ServerProcess:
    port, mport = free_port(), free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"xvla-serve-{port}.log"
    cmd = [sys.executable, "-m", "xvla.runtime.cli", "--bundle", str(bundle), "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", str(mport), "--providers", providers, "--threads", str(threads),
           "--log-level", "warning", *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
    return ServerProcess("xvla-serve", proc, port, mport, log_path)


async def _wait_serving(server: ServerProcess, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{server.name} at {server.target} not SERVING after {timeout:.0f} s")


def wait_serving(server: ServerProcess, timeout: float = 300.0) -> ServerProcess:
    asyncio.run(_wait_serving(server, timeout))
    return server


def start_peer(style: str, bundle: Path, log_dir: Path, threads: int = 0, providers: str = "cpu") -> ServerProcess:
    """A peer-protocol harness server (xvla.benchmarks.peers.server) on a free port."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"peer-{style}-{port}.log"
    ready = log_dir / f"peer-{style}-{port}.ready"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "xvla.benchmarks.peers.server", "--style", style, "--bundle", str(bundle),
           "--port", str(port), "--threads", str(threads), "--providers", providers, "--ready-file", str(ready)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
    server = ServerProcess(f"peer-{style}", proc, port, None, log_path)
    server.ready_file = ready  # type: ignore[attr-defined]
    return server


def wait_peer(server: ServerProcess, timeout: float = 300.0) -> ServerProcess:
    ready: Path = server.ready_file  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        if ready.exists():
            return server
        time.sleep(0.05)
    raise TimeoutError(f"{server.name} not ready after {timeout:.0f} s")
