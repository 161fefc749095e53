"""``xvla-serve`` as a separate process for end-to-end tests (as in deployment: grpc.aio servers and
clients on two event loops of one process race each other)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.agents.helpers import free_port
from xvla.agents.client import ClientConfig, PolicyClient, ServiceUnavailable

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def xvla_serve(args: list[str], log_path: Path, timeout_s: float = 180.0):
    """Start ``xvla-serve ARGS --port P`` and yield ``(target, describe)`` once it answers Describe."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xvla.runtime.cli", *args, "--host", "127.0.0.1", "--port", str(port),
         "--threads", "1", "--log-level", "warning", "--log-format", "text"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    target = f"127.0.0.1:{port}"
    try:
        with PolicyClient(ClientConfig([target], connect_timeout_s=1.0)) as client:
            deadline = time.monotonic() + timeout_s
            while True:
                assert proc.poll() is None, Path(log_path).read_text()[-3000:]
                try:
                    desc = client.describe(timeout=5)
                    break
                except ServiceUnavailable:
                    assert time.monotonic() < deadline, f"xvla-serve did not come up in {timeout_s:g} s"
                    time.sleep(0.3)
        yield target, desc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
