"""The three bridges against the fake policy service: real clients, round trips, malformed input."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect as ws_connect

from tests.agents.fake_server import HORIZON, FakeBehaviour, FakeServer, fake_action, fake_chunk
from tests.agents.helpers import behavior_observation, free_port
from xvla.agents.bridges.codecs import ArrayStyle, json_numpy_dumps, packb, unpackb
from xvla.agents.bridges.core import BridgeConfig
from xvla.agents.bridges.http_act import HttpActBridge
from xvla.agents.bridges.openpi_ws import OpenpiBridge
from xvla.agents.bridges.zmq_bridge import ZmqBridge
from xvla.agents.client import ClientConfig

REPO = Path(__file__).resolve().parents[2]
OPENPI_PY = REPO / ".venv-openpi" / "bin" / "python"


def _client(server) -> ClientConfig:
    return ClientConfig([server.target], connect_timeout_s=1.0)


@pytest.fixture
def openpi(server, loop):
    b = OpenpiBridge(_client(server), BridgeConfig(host="127.0.0.1", port=0, max_message_bytes=4 * 1024 * 1024))
    loop.run(b.start())
    yield b
    loop.run(b.stop())


# ----------------------------------------------------------------------------- openpi / BEHAVIOR


@pytest.mark.skipif(not OPENPI_PY.exists(), reason="no .venv-openpi (scripts/setup.sh makes it): cannot run openpi-client")
def test_real_openpi_client_drives_the_websocket_bridge(openpi, server):
    n_before = len(server.record.observations)
    r = subprocess.run([str(OPENPI_PY), str(Path(__file__).parent / "openpi_client_check.py"), str(openpi.port), "100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("1.")  # really the client's own numpy<2 environment
    assert out["health"] == "OK\n"
    meta = out["metadata"]
    assert meta["protocol"] == "openpi-websocket" and meta["action_dim"] == 23 and meta["horizon"] == HORIZON
    assert meta["cameras"]["head"] == [224, 224]
    assert out["n"] == 100
    # One session after the reset: frames 0..99, the fake policy's action for each.
    np.testing.assert_allclose(np.array(out["actions"]), np.stack([fake_action(f) for f in range(100)]), atol=0)
    assert out["chunk_shape"] == [8, 23] and out["chunk_first_equals_action"]
    assert out["server_timing_keys"] == ["infer_ms", "prev_total_ms"]
    seen = server.record.observations[n_before:]
    assert [f for _, f, _, _ in seen] == list(range(100))
    assert len({sid for sid, *_ in seen}) == 1
    _, _, cams, proprio_dim = seen[-1]
    assert proprio_dim == 256  # the raw BEHAVIOR proprio, for the service to extract
    # frames as captured (alpha dropped): the service resizes them by the bundle contract (bicubic)
    assert {n: c[:2] for n, c in cams.items()} == {"head": (720, 720), "left_wrist": (480, 480), "right_wrist": (480, 480)}
    assert server.record.headers[-1].task_id == 1 and server.record.headers[-1].domain_id == 19
    assert server.record.infer_requests[-1][0].session.task_id == 1  # the chunk request went through Infer


def test_openpi_malformed_input_gets_error_replies_and_the_bridge_keeps_serving(openpi):
    url = f"ws://127.0.0.1:{openpi.port}"
    with ws_connect(url, max_size=None, compression=None) as ws:
        meta = unpackb(ws.recv())
        assert meta["server"] == "xvla-agent-bridge"

        def ask(frame) -> str | dict:
            ws.send(frame)
            reply = ws.recv(timeout=30)
            return reply if isinstance(reply, str) else unpackb(reply)

        good = behavior_observation()
        assert ask(packb(good))["action"].shape == (23,)
        assert ask("hello").startswith("error: expected binary msgpack")
        assert "not a valid msgpack" in ask(b"\xc1\xc1\xc1")
        missing = {k: v for k, v in good.items() if "left_realsense" not in k}
        assert "missing observation key 'robot_r1::robot_r1:left_realsense_link:Camera:0::rgb'" in ask(packb(missing))
        flat = dict(good, **{"robot_r1::robot_r1:zed_link:Camera:0::rgb": np.zeros((720, 720), np.uint8)})
        assert "robot_r1::robot_r1:zed_link:Camera:0::rgb: expected an HxWx3" in ask(packb(flat))
        short = dict(good, **{"robot_r1::proprio": np.zeros(10, np.float32)})
        assert "robot_r1::proprio: 10 values, the policy accepts [23, 256]" in ask(packb(short))
        assert "__action_chunk_size__: 99 is outside 1..30" in ask(packb(dict(good, __action_chunk_size__=99)))
        assert "a batch of 2" in ask(packb(dict(good, **{"robot_r1::proprio": np.zeros((2, 256), np.float32)})))
        big = packb({"blob": np.zeros(5 * 1024 * 1024, np.uint8)})  # over the 4 MB limit, under the hard cap
        assert "exceeds the limit of 4194304 bytes" in ask(big)
        # ... and the same connection still serves, batched input answered in kind
        batched = {k: (v[None] if isinstance(v, np.ndarray) and k != "task_id" else v) for k, v in good.items()}
        assert ask(packb(batched))["action"].shape == (1, 23)
    # Beyond the hard cap the websocket layer refuses the frame (1009); new connections still work.
    with ws_connect(url, max_size=None, compression=None) as ws:
        ws.recv()
        ws.send(b"\x00" * (17 * 1024 * 1024))
        with pytest.raises(ConnectionClosedError) as e:
            ws.recv(timeout=30)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009
    with ws_connect(url, max_size=None, compression=None) as ws:
        ws.recv()
        ws.send(packb(behavior_observation()))
        assert unpackb(ws.recv(timeout=30))["action"].shape == (23,)


def test_openpi_reports_an_unreachable_service(loop):
    b = OpenpiBridge(ClientConfig([f"127.0.0.1:{free_port()}"], connect_timeout_s=0.3), BridgeConfig(host="127.0.0.1", port=0))
    loop.run(b.start())
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{b.port}/healthz", timeout=10)
        assert e.value.code == 503
        e.value.close()
        with ws_connect(f"ws://127.0.0.1:{b.port}", max_size=None) as ws:
            assert unpackb(ws.recv())["protocol"] == "openpi-websocket"  # metadata even without a policy
            ws.send(packb(behavior_observation()))
            assert ws.recv(timeout=30).startswith("error: policy service unavailable")
    finally:
        loop.run(b.stop())


# ----------------------------------------------------------------------------- ZeroMQ


@pytest.fixture
def zmq_bridge(server, loop):
    b = ZmqBridge(_client(server), BridgeConfig(host="127.0.0.1", port=0, max_message_bytes=4 * 1024 * 1024),
                  api_token="s3cret")
    loop.run(b.start())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 30000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{b.port}")

    def call(req, style=ArrayStyle.OPENPI, raw: bytes | None = None):
        sock.send(raw if raw is not None else packb(req, style))
        return unpackb(sock.recv())

    yield call
    sock.close(0)
    ctx.term()
    loop.run(b.stop())


def test_zmq_round_trips(zmq_bridge, server):
    call = zmq_bridge
    tok = {"api_token": "s3cret"}
    assert call({"endpoint": "ping", **tok})["status"] == "ok"
    meta = call({"endpoint": "describe", **tok})
    assert meta["protocol"] == "zmq-msgpack" and meta["action_dim"] == 23
    assert call({"endpoint": "reset", **tok}) ["status"] == "ok"
    obs = behavior_observation()
    got = [call({"endpoint": "get_action", "data": obs, **tok})["action"] for _ in range(3)]
    np.testing.assert_array_equal(np.stack(got), np.stack([fake_action(f) for f in range(3)]))
    # The neutral form, GR00T-style arrays (answered in the same style), and a chunk request.
    neutral = {"images": {"head": np.zeros((720, 720, 3), np.uint8), "left_wrist": np.zeros((480, 480, 3), np.uint8),
                          "right_wrist": np.zeros((480, 480, 3), np.uint8)},
               "proprio": np.zeros(23, np.float32), "instruction": "pick up the radio", "__action_chunk_size__": 5}
    reply = call({"endpoint": "get_action", "data": neutral, **tok}, style=ArrayStyle.GR00T)
    assert reply["action_chunk"].shape == (5, 23)
    assert server.record.infer_requests[-1][1]["proprio_dim"] == 23


def test_zmq_malformed_input_gets_error_replies(zmq_bridge):
    call = zmq_bridge
    tok = {"api_token": "s3cret"}
    assert "api_token: missing or wrong" in call({"endpoint": "ping"})["error"]
    assert "not a valid msgpack" in call(None, raw=b"\xc1\xc1")["error"]
    assert "unknown endpoint 'fly'" in call({"endpoint": "fly", **tok})["error"]
    assert "data: get_action needs an observation map" in call({"endpoint": "get_action", **tok})["error"]
    obs = behavior_observation()
    missing = {k: v for k, v in obs.items() if k != "robot_r1::proprio"}
    assert "missing observation key 'robot_r1::proprio'" in call({"endpoint": "get_action", "data": missing, **tok})["error"]
    bad = dict(obs, **{"robot_r1::robot_r1:zed_link:Camera:0::rgb": np.zeros((720, 720, 2), np.uint8)})
    assert "expected an HxWx3" in call({"endpoint": "get_action", "data": bad, **tok})["error"]
    assert "images: missing camera 'left_wrist'" in call(
        {"endpoint": "get_action", "data": {"images": {"head": np.zeros((8, 8, 3), np.uint8)}, "proprio": np.zeros(23)}, **tok})["error"]
    big = {"endpoint": "get_action", "data": {"blob": np.zeros(5 * 1024 * 1024, np.uint8)}, **tok}
    assert "exceeds the limit" in call(big)["error"]
    assert call({"endpoint": "get_action", "data": obs, **tok})["action"].shape == (23,)  # still serving


def test_task_id_only_reaches_policies_with_task_prompts(loop):
    with FakeServer(FakeBehaviour(tasks=())) as plain:
        b = ZmqBridge(_client(plain), BridgeConfig(host="127.0.0.1", port=0))
        loop.run(b.start())
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, 30000)
        sock.connect(f"tcp://127.0.0.1:{b.port}")
        try:
            sock.send(packb({"endpoint": "get_action", "data": behavior_observation(task_id=7)}))
            assert unpackb(sock.recv())["action"].shape == (23,)
        finally:
            sock.close(0)
            ctx.term()
            loop.run(b.stop())
    assert plain.record.headers[-1].task_id == -1  # BEHAVIOR's task id is not a prompt index for this policy


# ----------------------------------------------------------------------------- HTTP /act


@pytest.fixture
def http(server, loop):
    b = HttpActBridge(_client(server), BridgeConfig(host="127.0.0.1", port=0, max_message_bytes=4 * 1024 * 1024))
    loop.run(b.start())
    yield f"http://127.0.0.1:{b.port}"
    loop.run(b.stop())


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_http_act_round_trip_with_the_xvla_client_payload(http, server):
    rng = np.random.default_rng(1)
    payload = {  # what X-VLA's evaluation clients post: json_numpy strings
        "proprio": json_numpy_dumps(np.zeros(23, np.float32)),
        "language_instruction": "turn on the radio",
        "image0": json_numpy_dumps(rng.integers(0, 256, (720, 720, 3), dtype=np.uint8)),
        "image1": json_numpy_dumps(rng.integers(0, 256, (480, 480, 3), dtype=np.uint8)),
        "domain_id": 19,
        "steps": 10,
    }
    status, out = _post(f"{http}/act", json.dumps(payload).encode())
    assert status == 200, out
    np.testing.assert_allclose(np.array(out["action"]), fake_chunk(0), rtol=1e-6)
    req, info = server.record.infer_requests[-1]
    assert req.session.instruction == "turn on the radio" and req.session.domain_id == 19
    assert req.session.execution.denoising_steps == 10
    # frames go out at their own size: the service resizes them by the bundle contract (bicubic)
    assert {n: c[:2] for n, c in info["cameras"].items()} == {"head": (720, 720), "left_wrist": (480, 480)}
    # JPEG bytes pass through encoded (the service decodes them), plain lists work too.
    jpeg = np.frombuffer(b"\xff\xd8\xff\xe0" + b"\x00" * 60, np.uint8)
    status, out = _post(f"{http}/act", json.dumps(dict(payload, image0=json_numpy_dumps(jpeg), proprio=[0.0] * 23)).encode())
    assert status == 200 and np.array(out["action"]).shape == (HORIZON, 23)
    assert server.record.infer_requests[-1][1]["cameras"]["head"][2] == 2  # pb.JPEG
    with urllib.request.urlopen(f"{http}/healthz", timeout=10) as r:
        assert r.status == 200


@pytest.mark.parametrize("mutate,status,match", [
    (lambda p: p.pop("language_instruction"), 400, "language_instruction: missing"),
    (lambda p: p.update(image0=json_numpy_dumps(np.zeros((4, 4, 2), np.uint8))), 400, "image0: expected an HxWx3"),
    (lambda p: p.update(proprio=json_numpy_dumps(np.zeros(7, np.float32))), 400, "proprio: 7 values"),
    (lambda p: p.update(steps="many"), 400, "steps: not an integer"),
    (lambda p: p.pop("image0"), 400, "image0: no valid images"),
    (lambda p: p.pop("domain_id"), 400, "domain_id: missing"),
    (lambda p: p.update(image0=json.dumps("/no/such/image.png")), 400, "image0: no image file"),
])
def test_http_act_bad_payloads(http, mutate, status, match):
    payload = {"proprio": json_numpy_dumps(np.zeros(23, np.float32)), "language_instruction": "x", "domain_id": 19,
               "image0": json_numpy_dumps(np.zeros((64, 64, 3), np.uint8))}
    mutate(payload)
    code, out = _post(f"{http}/act", json.dumps(payload).encode())
    assert code == status and match in out["error"]


def test_http_act_rejects_garbage_and_oversized_bodies(http):
    code, out = _post(f"{http}/act", b"{not json")
    assert code == 422 and out["detail"][0]["type"] == "json_invalid"  # FastAPI's shape, as the official server
    code, out = _post(f"{http}/act", b"[1, 2]")
    assert code == 422 and out["detail"][0]["type"] == "dict_type"
    code, out = _post(f"{http}/act", b"[" + b"0," * (3 * 1024 * 1024) + b"0]")
    assert code == 413 and "exceeds the limit" in out["error"]
    code, out = _post(f"{http}/act", json.dumps({"proprio": [0.0] * 23, "language_instruction": "x", "domain_id": 19,
                                                  "image0": np.zeros((8, 8), int).tolist()}).encode())  # grayscale list
    assert code == 200  # and it still serves



def test_ragged_and_overflowing_numbers_are_field_errors_not_crashes():
    """Fuzz finds (issue 12): a ragged task id, a task id or domain id past int32, a ragged image list."""
    from xvla.agents.bridges.codecs import WireError, as_array, as_int32
    from xvla.agents.bridges.observations import _task_id, chunk_size

    with pytest.raises(WireError, match="task_id"):
        _task_id([[1, 2], [3]])
    with pytest.raises(WireError, match=r"task_id: .* is outside"):
        _task_id(2**40)
    with pytest.raises(WireError, match="__action_chunk_size__"):
        chunk_size({"__action_chunk_size__": [[1], [2, 3]]}, 30)
    with pytest.raises(WireError, match=r"domain_id: .* is outside"):
        as_int32(10**300, "domain_id", lo=0)
    with pytest.raises(WireError, match="image0: not a regular numeric array"):
        as_array([[1, 2, 3], [4]], "image0")
