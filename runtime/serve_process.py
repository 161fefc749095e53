"""``xvla-serve`` in a child process, for tools that drive it like a robot would.

The demo, the overhead measurement and the benchmarks all run the server in its own process
(as in production: the robot's client and the policy server never share an interpreter, a
GIL or an event loop), wait for health SERVING, and stop it with SIGTERM so it drains.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """Environment of child processes: offline, unbuffered, no tokenizer thread pools."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


@dataclass
class ServerProcess:
    """A started server: its process, address and (for xvla-serve) the Prometheus port."""

    name: str
    proc: subprocess.Popen
    port: int
    metrics_port: Optional[int] = None
    log_path: Optional[Path] = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        """SIGTERM (the server drains and closes its streams), then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_xvla_serve(bundle: Path, log_path: Optional[Path] = None, *, providers: str = "cpu", threads: int = 0,
                     metrics: bool = True, extra_args: tuple[str, ...] = ()) -> ServerProcess:
    """Starts ``xvla-serve --bundle`` on free loopback ports; its output goes to ``log_path`` (or nowhere)."""
    port = free_port()
    mport = free_port() if metrics else None
    cmd = [sys.executable, "-m", "xvla.runtime.cli", "--bundle", str(bundle), "--host", "127.0.0.1",
           "--port", str(port), "--providers", providers, "--threads", str(threads), "--log-level", "warning",
           *(["--metrics-port", str(mport)] if mport else []), *extra_args]
    if log_path is None:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=child_env())
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    return ServerProcess("xvla-serve", proc, port, mport, log_path)


async def wait_serving_async(server: ServerProcess, timeout: float = 300.0) -> ServerProcess:
    """Polls grpc.health.v1 until SERVING (engines loaded and warm); fails fast if the process died."""
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
                    return server
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{server.name} at {server.target} not SERVING after {timeout:.0f} s")


def wait_serving(server: ServerProcess, timeout: float = 300.0) -> ServerProcess:
    return asyncio.run(wait_serving_async(server, timeout))
