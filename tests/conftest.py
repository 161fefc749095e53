"""Shared test set-up: offline, small thread counts, and where the conformance data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# Tests that stream at 30 Hz never rerun: a starved, safe or skipped tick must have its cause in
# the record (tests/support/realtime.py), and the zero-starved / zero-skipped figures are the
# benchmarks' (benchmarks/closed_loop.py, benchmarks/e2e.py), not a unit test's wall-clock luck.


def conformance_root() -> Path:
    """The golden folder: $XVLA_CONFORMANCE_DIR, default ../shared/conformance next to the repo."""
    return Path(os.environ.get("XVLA_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance")).resolve()


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    root = conformance_root()
    if not root.is_dir():
        pytest.skip(f"conformance data not found at {root} (set XVLA_CONFORMANCE_DIR)")
    return root
