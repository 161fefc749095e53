"""Servers under test, each in its own process (as in production: the robot's client and the
policy server never share an interpreter, a GIL or an event loop)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from xvla.runtime.serve_process import ServerProcess, free_port, wait_serving
from xvla.runtime.serve_process import child_env as _env
from xvla.runtime.serve_process import start_xvla_serve as _start_xvla_serve

__all__ = ["ServerProcess", "free_port", "metric_value", "process_of", "serve_default_unless", "start_peer",
           "start_xvla_serve", "wait_peer", "wait_serving"]


def serve_default_unless(target: str | None, timeout: float = 180.0) -> tuple[str, ServerProcess | None]:
    """``target`` itself, or an ``xvla-serve`` on the embedded default bundle started for the benchmark
    (the caller stops the returned process)."""
    if target is not None:
        return target, None
    from xvla.runtime.artifacts import ensure_bundle

    server = _start_xvla_serve(ensure_bundle(), metrics=False, threads=1)
    wait_serving(server, timeout)
    return server.target, server


def process_of(server: ServerProcess) -> psutil.Process:
    """The server's psutil handle (CPU use sampling in the closed loop); cached on the object."""
    ps = getattr(server, "_ps", None)
    if ps is None:
        ps = psutil.Process(server.proc.pid)
        server._ps = ps  # type: ignore[attr-defined]
    return ps


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
    log_path = log_dir / f"xvla-serve-{time.time_ns()}.log"
    return _start_xvla_serve(bundle, log_path, providers=providers, threads=threads, extra_args=extra_args)


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
