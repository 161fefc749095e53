"""The BEHAVIOR evaluators' clients (as in tests/support/behavior_clients.py) through the BEHAVIOR bridge
to the real policy service on the embedded default bundle (tiny R1Pro v20), every scenario of both years.

Every step must be answered with a finite float32 action of the evaluator's shape, in order (lock-step:
one reply per request), and ``/healthz`` must be 200 because this policy takes the robot's observations.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.agents.helpers import LoopThread
from tests.support.behavior_clients import EvaluatorClient, MultiEnvClient, observation
from tests.support.serve import xvla_serve
from xvla.agents.bridges.behavior import BehaviorBridge, BehaviorOptions
from xvla.agents.bridges.core import BridgeConfig
from xvla.agents.client import ClientConfig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    bundles = pytest.importorskip("tests.bundles")
    from xvla.runtime.artifacts import DEFAULT_PRESET

    root = tmp_path_factory.mktemp("behavior-e2e")
    bundle = Path(bundles.make_tiny_bundle(root / "cache", preset=DEFAULT_PRESET, parity=False))
    with xvla_serve(["--bundle", str(bundle)], root / "serve.log") as (target, _desc), LoopThread() as lt:
        b = BehaviorBridge(ClientConfig([target]), BridgeConfig(host="127.0.0.1", port=0, reply_timeout_s=30.0),
                           BehaviorOptions(num_envs=3))
        lt.run(b.start())
        try:
            yield b
        finally:
            lt.run(b.stop())


def _check(actions: list[np.ndarray], n: int, shape=(23,)) -> None:
    assert len(actions) == n
    for a in actions:
        assert a.shape == shape and a.dtype == np.float32 and np.all(np.isfinite(a))


@pytest.mark.parametrize("year,size,depth", [(2025, "224", False), (2025, "full", False),
                                             (2026, "224", False), (2026, "full", True)],
                         ids=["2025-224-rgba", "2025-fullres-rgba", "2026-DefaultWrapper-224", "2026-RGBDFullRes-depth"])
def test_evaluator_scenario(bridge, year, size, depth):
    with urllib.request.urlopen(f"http://127.0.0.1:{bridge.port}/healthz", timeout=10) as r:
        assert r.status == 200
    c = EvaluatorClient("127.0.0.1", bridge.port, year)
    c.reset()
    acts = [c.act(observation(year, size, seed=k, task_id=3, depth=depth)) for k in range(8)]
    c.reset()
    acts += [c.act(observation(year, size, seed=100 + k, task_id=3, depth=depth)) for k in range(4)]
    c.close()
    _check(acts, 12)
    assert c.requests == len(c.replies) == 12
    assert all("server_timing" in r and r["server_timing"]["infer_ms"] > 0 for r in c.replies)


def test_2026_chunk_replay_k10(bridge):
    c = EvaluatorClient("127.0.0.1", bridge.port, 2026, action_chunk_size=10)
    acts = [c.act(observation(2026, "full", seed=k, depth=True)) for k in range(25)]
    c.close()
    _check(acts, 25)
    assert c.requests == 3
    for r in c.replies:  # the client itself checked row 0 == action exactly
        assert r["action_chunk"].shape == (10, 23)


def test_2026_three_environments_on_three_ports_at_once(bridge):
    multi = MultiEnvClient("127.0.0.1", bridge.ports)
    multi.reset()
    steps = [multi.forward([observation(2026, "224", seed=10 * s + i, task_id=i) for i in range(3)]) for s in range(8)]
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{bridge.port}/status", timeout=10).read())
    multi.close()
    for a in steps:
        assert a.shape == (3, 23) and a.dtype == np.float32 and np.all(np.isfinite(a))
    for c in multi.clients:
        assert c.requests == len(c.replies) == 8
        assert all(r["action"].shape == (1, 23) for r in c.replies)  # the batch axis comes back
    assert status["ready"] and sorted(s["env"] for s in status["sessions"]) == [0, 1, 2]
    assert [s["task_id"] for s in sorted(status["sessions"], key=lambda s: s["env"])] == [0, 1, 2]
