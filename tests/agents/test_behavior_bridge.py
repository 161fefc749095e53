"""The BEHAVIOR bridge against the fake service, driven by clients that behave like the evaluators'.

The fake policy's actions are a known function of the frame index, so these tests check that
each step got the answer for *its* observation, in order, per environment.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.agents.fake_server import FakeBehaviour, FakeServer, fake_action, fake_chunk
from tests.agents.helpers import LoopThread
from tests.support.behavior_clients import EvaluatorClient, MultiEnvClient, PolicyTimeoutError, observation
from xvla.agents.bridges.behavior import BehaviorBridge, BehaviorOptions
from xvla.agents.bridges.core import BridgeConfig
from xvla.agents.client import ClientConfig
from xvla.core.embodiments.r1pro_layouts import R1PRO_2026


class Bridge:
    def __init__(self, target: str, num_envs: int = 1, reply_timeout_s: float = 5.0, **options) -> None:
        self.lt = LoopThread().__enter__()
        self.bridge = BehaviorBridge(ClientConfig([target], connect_timeout_s=1.0),
                                     BridgeConfig(host="127.0.0.1", port=0, reply_timeout_s=reply_timeout_s),
                                     BehaviorOptions(num_envs=num_envs, **options))
        self.lt.run(self.bridge.start())

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.bridge.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def close(self) -> None:
        self.lt.run(self.bridge.stop())
        self.lt.__exit__(None, None, None)


@pytest.fixture()
def fake():
    with FakeServer() as srv:
        yield srv


def test_2026_three_environments_on_three_ports_each_its_own_session_in_order(fake):
    b = Bridge(fake.target, num_envs=3)
    try:
        assert len(set(b.bridge.ports)) == 3
        multi = MultiEnvClient("127.0.0.1", b.bridge.ports)
        multi.reset()
        for step in range(12):
            actions = multi.forward([observation(2026, "224", seed=step * 3 + i) for i in range(3)])
            assert actions.shape == (3, 23) and actions.dtype == np.float32
            for i in range(3):  # lock-step per env: step k of each env is that session's frame k
                np.testing.assert_array_equal(actions[i], fake_action(step))
        status = json.loads(b.get("/status")[1])
        assert status["ready"] and len(status["sessions"]) == 3
        assert sorted(s["env"] for s in status["sessions"]) == [0, 1, 2]
        assert {s["proprio_dim"] for s in status["sessions"]} == {61}
        multi.close()
    finally:
        b.close()
    assert len(fake.record.headers) == 3  # one policy session per environment, none reopened


def test_2026_proprio_is_cut_to_the_23d_state_by_the_evaluators_layout(fake):
    b = Bridge(fake.target)
    try:
        c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026)
        obs = observation(2026, "full", depth=True)
        c.act(obs)
        c.close()
    finally:
        b.close()
    _, _, cams, pdim = fake.record.observations[0]
    assert pdim == 23
    assert set(cams) == {"head", "left_wrist", "right_wrist"}
    # what the bridge forwards is exactly the layout's cut of the 61 values (batch axis kept)
    from xvla.agents.bridges.behavior import SessionInfo
    from xvla.agents.bridges.observations import PolicyView

    policy = PolicyView.from_describe(fake.service.describe())
    raw = obs["robot_r1::proprio"]
    out = b.bridge._adapt({"robot_r1::proprio": raw[None]}, policy, SessionInfo(0, 0, ""))
    np.testing.assert_array_equal(out["robot_r1::proprio"], R1PRO_2026.state(raw)[None])
    np.testing.assert_array_equal(out["robot_r1::proprio"][0, 7:14], raw[3:10])  # left arm qpos


def test_2026_chunk_replay_first_row_is_the_action_and_k_above_horizon_is_refused(fake):
    b = Bridge(fake.target)
    try:
        c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026, action_chunk_size=10)
        acts = [c.act(observation(2026, "224", seed=i)) for i in range(25)]
        assert c.requests == 3  # 25 steps replayed from chunks of 10
        np.testing.assert_array_equal(np.stack(acts[:10]), fake_chunk(0)[:10])
        c.close()
        big = EvaluatorClient("127.0.0.1", b.bridge.port, 2026, action_chunk_size=31)  # horizon 30
        with pytest.raises(RuntimeError, match="__action_chunk_size__: 31"):
            big.act(observation(2026))
        big.close()
        # batched (multi-env) chunk: (1, K, 23), row 0 == action (1, 23)
        multi = MultiEnvClient("127.0.0.1", b.bridge.ports, action_chunk_size=10)
        a = multi.forward([observation(2026)])
        assert a.shape == (1, 23)
        assert multi.clients[0].replies[-1]["action_chunk"].shape == (1, 10, 23)
        multi.close()
    finally:
        b.close()


def test_2025_client_256d_rgba_torch_packing_reset_without_reply(fake):
    b = Bridge(fake.target)
    try:
        c = EvaluatorClient("127.0.0.1", b.bridge.port, 2025)
        c.reset()
        for k in range(5):
            a = c.act(observation(2025, "full", seed=k, task_id=1))
            np.testing.assert_array_equal(a, fake_action(k))
        c.reset()  # a new episode: a new session, frames start again
        np.testing.assert_array_equal(c.act(observation(2025, "224", task_id=1)), fake_action(0))
        assert c.metadata["protocol"] == "behavior-websocket"
        c.close()
    finally:
        b.close()
    assert fake.record.observations[0][3] == 256  # the fake takes raw 256 itself: passed through


def test_deadline_a_late_service_is_an_error_reply_and_a_short_client_deadline_a_timeout():
    with FakeServer(FakeBehaviour(delay_s=3.0)) as srv:
        b = Bridge(srv.target, reply_timeout_s=0.3)
        try:
            c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026)
            t = time.monotonic()
            with pytest.raises(RuntimeError, match="did not answer within 0.3 s"):
                c.act(observation(2026))
            assert time.monotonic() - t < 2.5  # the bridge's deadline, not the service's 3 s
            c.close()
        finally:
            b.close()
        b = Bridge(srv.target, reply_timeout_s=5.0)
        try:
            c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026)
            c._wait_for_server()
            c.deadline = time.monotonic() + 0.3
            with pytest.raises(PolicyTimeoutError):
                c.act(observation(2026))
            srv.behaviour.delay_s = 0.0
            c2 = EvaluatorClient("127.0.0.1", b.bridge.port, 2026)  # the bridge keeps serving
            assert c2.act(observation(2026)).shape == (23,)
            c2.close()
        finally:
            b.close()


def test_healthz_is_503_when_the_policy_cannot_take_behavior_observations():
    with FakeServer(FakeBehaviour(cameras=(("front", 224, 224),), accepted_proprio_dims=(20,))) as srv:
        b = Bridge(srv.target)
        try:
            code, body = b.get("/healthz")
            assert code == 503 and "front" in body and "proprio" in body
            st = json.loads(b.get("/status")[1])
            assert st["ready"] is False and len(st["problems"]) == 2
            c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026, health_timeout_s=0.5)
            with pytest.raises(ConnectionError):
                c.act(observation(2026))
        finally:
            b.close()


def test_task_ids_map_by_name_or_are_refused_naming_the_known_tasks(fake, tmp_path):
    # the fake policy knows 0 turning_on_radio, 1 picking_up_trash
    table = tmp_path / "B100_task_misc.csv"
    table.write_text("Task,Task ID\npicking_up_trash,75\nmake_pizza,76\n")
    from xvla.core.embodiments.behavior_tasks import load_task_csv

    b = Bridge(fake.target, task_table=load_task_csv(table))
    try:
        c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026)
        c.act(observation(2026, task_id=75))
        with pytest.raises(RuntimeError, match=r"task_id: 76 \(make_pizza\) is not one of the policy's 2 tasks.*0 turning_on_radio"):
            c.act(observation(2026, task_id=76))
        c.close()
    finally:
        b.close()
    assert fake.record.headers[0].task_id == 1


def test_cli_bridge_behavior_serves_num_envs_ports_from_one_process(fake, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.agents.helpers import free_port

    port = free_port()
    table = tmp_path / "tasks.json"
    table.write_text(json.dumps({"picking_up_trash": 60}))
    p = subprocess.Popen([sys.executable, "-m", "xvla.agents.cli", "bridge", "behavior", "--target", fake.target,
                          "--host", "127.0.0.1", "--port", str(port), "--num-envs", "2", "--task-table", str(table)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = EvaluatorClient("127.0.0.1", port + 1, 2026, health_timeout_s=30)
        np.testing.assert_array_equal(c.act(observation(2026, task_id=60)), fake_action(0))
        c.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
            st = json.loads(r.read())
        assert st["ready"] and st["ports"] == [port, port + 1] and st["config"]["task_table"] == "custom"
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    assert rc == 0, p.stderr.read()[-2000:]
    assert fake.record.headers[-1].task_id == 1  # 60 -> picking_up_trash -> the policy's task 1


def test_task_routes_send_each_task_to_its_checkpoint(fake, tmp_path):
    """A task -> checkpoint map (as public BEHAVIOR servers keep one): the session of a mapped task asks the
    service for that route; an unmapped task leaves routing to the service."""
    from xvla.agents.bridges.behavior import load_task_routes

    routes = tmp_path / "task_routes.yaml"
    routes.write_text("picking_up_trash: trash-specialist\n0: radio-specialist\n")
    table = tmp_path / "B100_task_misc.csv"
    table.write_text("Task,Task ID\nturning_on_radio,10\npicking_up_trash,11\nmake_pizza,12\n")
    from xvla.core.embodiments.behavior_tasks import load_task_csv

    b = Bridge(fake.target, task_table=load_task_csv(table))
    b.bridge.core.config.task_routes = load_task_routes(str(routes))
    try:
        c = EvaluatorClient("127.0.0.1", b.bridge.port, 2026)
        c.act(observation(2026, task_id=11))  # picking_up_trash (policy task 1), mapped by name
        c.act(observation(2026, task_id=10))  # turning_on_radio (policy task 0), mapped by id: a new session
        c.close()
    finally:
        b.close()
    assert [(h.task_id, h.route) for h in fake.record.headers] == [(1, "trash-specialist"), (0, "radio-specialist")]
    with pytest.raises(ValueError, match="task id or name -> route"):
        (tmp_path / "bad.json").write_text('{"1": 3}')
        load_task_routes(str(tmp_path / "bad.json"))
