"""Fixtures the bridge tests share: the fake policy service and an event loop on its own thread."""

from __future__ import annotations

import pytest

from tests.agents.fake_server import FakeServer
from tests.agents.helpers import LoopThread


@pytest.fixture(scope="module")
def server():
    with FakeServer() as s:
        yield s


@pytest.fixture(scope="module")
def loop():
    with LoopThread() as lt:
        yield lt
