"""Each bridge's wire format under a seeded fuzz mix (against the fake policy service): every request is
answered (no hang), the bridge keeps serving; ZeroMQ includes multipart requests."""

from __future__ import annotations

import pytest

from tests.agents.fake_server import FakeServer
from tests.agents.helpers import LoopThread
from xvla.agents.bridges.core import BridgeConfig
from xvla.agents.bridges.observations import BEHAVIOR_CAMERA_KEYS, BEHAVIOR_PROPRIO_KEY
from xvla.agents.client import ClientConfig
from xvla.benchmarks.fuzzing import fuzz_http, fuzz_websocket, fuzz_zmq

KEYS = {**BEHAVIOR_CAMERA_KEYS, "proprio": BEHAVIOR_PROPRIO_KEY}


@pytest.fixture(scope="module")
def env():
    with FakeServer() as s, LoopThread() as lt:
        yield s, lt


def _bridge(cls, env):
    server, loop = env
    b = cls(ClientConfig([server.target], connect_timeout_s=1.0),
            BridgeConfig(host="127.0.0.1", port=0, max_message_bytes=8 * 1024 * 1024, reply_timeout_s=5))
    loop.run(b.start())
    return b


def test_zmq_bridge_fuzz(env):
    from xvla.agents.bridges.zmq_bridge import ZmqBridge

    b = _bridge(ZmqBridge, env)
    try:
        report = fuzz_zmq(b.port, KEYS, n=400, seed=7)
    finally:
        env[1].run(b.stop())
    print(report.summary())
    assert report.cases == 400 and report.hangs == 0 and report.bad_codes == []
    assert report.codes["error"] > 100 and report.codes["ok"] > 0  # the mix reaches the policy too


def test_websocket_bridge_fuzz(env):
    from xvla.agents.bridges.openpi_ws import OpenpiBridge

    b = _bridge(OpenpiBridge, env)
    try:
        report = fuzz_websocket(b.port, KEYS, n=300, seed=8)
    finally:
        env[1].run(b.stop())
    print(report.summary())
    assert report.cases == 300 and report.hangs == 0 and report.bad_codes == []  # no 1011 close: ragged ids too
    assert report.codes["error"] > 100


def test_http_bridge_fuzz(env):
    from xvla.agents.bridges.http_act import HttpActBridge

    b = _bridge(HttpActBridge, env)
    try:
        report = fuzz_http(b.port, n=300, seed=9)
    finally:
        env[1].run(b.stop())
    print(report.summary())
    assert report.cases == 300 and report.hangs == 0 and report.bad_codes == []  # no 500 for the client's fault
    assert report.codes["400"] > 100
