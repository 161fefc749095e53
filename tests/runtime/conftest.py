"""Fixtures of the runtime tests: the tiny exported bundle (exported once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The shared tiny R1Pro bundle (tests/bundles.py: exported once per session, parity-gated; 23-d auto action
    with delta dims, raw 256-d proprio accepted).

    ``XVLA_TINY_BUNDLE=DIR`` reuses an already exported bundle (saves the export while iterating).
    """
    if os.environ.get("XVLA_TINY_BUNDLE"):
        return Path(os.environ["XVLA_TINY_BUNDLE"])
    from tests.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles"), preset="tiny-r1pro")  # the key tests/benchmarks uses
