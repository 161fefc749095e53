"""The tiny R1Pro bundle the benchmark tests run on: shared with the agents' e2e tests (tests.bundles)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bench_bundle(tmp_path_factory) -> Path:
    from tests.bundles import make_tiny_bundle

    # the bench's "tiny" is the tiny topology with the 23-d R1Pro head, exactly the preset "tiny-r1pro"
    return Path(make_tiny_bundle(tmp_path_factory.mktemp("agent-bundles"), preset="tiny-r1pro"))
