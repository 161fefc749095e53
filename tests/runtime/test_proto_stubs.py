"""The committed stubs must be what proto/generate.py makes from proto/policy.proto (fails when stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stubs_are_fresh():
    proc = subprocess.run([sys.executable, str(REPO / "proto" / "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_stubs_are_the_repo_stubs():
    from xvla.proto import policy_pb2

    assert Path(policy_pb2.__file__).resolve().parent == REPO / "proto"
    assert policy_pb2.DESCRIPTOR.package == "xvla.policy.v1"
