"""Bridge transports under misuse: ZeroMQ multipart requests, one session per ZeroMQ identity, CURVE,
oversized frames refused before the resize (which runs off the event loop)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
import zmq.auth

from tests.agents.fake_server import fake_action
from tests.agents.helpers import behavior_observation
from xvla.agents.bridges.codecs import packb, unpackb
from xvla.agents.bridges.core import BridgeConfig
from xvla.agents.bridges.zmq_bridge import CurveConfig, ZmqBridge
from xvla.agents.client import ClientConfig


@pytest.fixture
def bridge(server, loop):
    b = ZmqBridge(ClientConfig([server.target], connect_timeout_s=1.0),
                  BridgeConfig(host="127.0.0.1", port=0, max_message_bytes=16 * 1024 * 1024))
    loop.run(b.start())
    yield b
    loop.run(b.stop())


def _req(ctx, port, timeout_ms=20000, **curve):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    # a REQ send blocks until a peer is connected: a refused CURVE handshake never connects, so bound it too
    s.setsockopt(zmq.SNDTIMEO, timeout_ms)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in curve.items():
        setattr(s, k, v)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def _call(sock, req):
    sock.send(packb(req))
    return unpackb(sock.recv())


def test_multipart_requests_get_an_error_and_the_bridge_keeps_serving(bridge):
    ctx = zmq.Context()
    try:
        s = _req(ctx, bridge.port)
        for _ in range(10):
            s.send_multipart([packb({"endpoint": "ping"}), packb({"endpoint": "ping"})])
            err = unpackb(s.recv())["error"]
            assert err.startswith("request:") and "2 frames" in err
        assert _call(s, {"endpoint": "ping"})["status"] == "ok"
        assert _call(s, {"endpoint": "get_action", "data": behavior_observation()})["action"].shape == (23,)
        s.close(0)
    finally:
        ctx.destroy(linger=0)


def test_each_zeromq_client_has_its_own_session(bridge):
    ctx = zmq.Context()
    try:
        a, b = _req(ctx, bridge.port), _req(ctx, bridge.port)
        obs = behavior_observation()
        got_a = [_call(a, {"endpoint": "get_action", "data": obs})["action"] for _ in range(3)]
        got_b = _call(b, {"endpoint": "get_action", "data": obs})["action"]
        assert _call(a, {"endpoint": "reset"})["status"] == "ok"  # resets a's episode only
        got_b2 = _call(b, {"endpoint": "get_action", "data": obs})["action"]
        got_a2 = _call(a, {"endpoint": "get_action", "data": obs})["action"]
        a.close(0)
        b.close(0)
    finally:
        ctx.destroy(linger=0)
    np.testing.assert_array_equal(np.stack(got_a), np.stack([fake_action(f) for f in range(3)]))
    np.testing.assert_array_equal(got_b, fake_action(0))  # a fresh session, not a's fourth frame
    np.testing.assert_array_equal(got_b2, fake_action(1))  # not restarted by a's reset
    np.testing.assert_array_equal(got_a2, fake_action(0))
    assert len(bridge.clients) == 2


def test_a_huge_frame_is_refused_before_the_resize_and_others_keep_being_served(bridge):
    ctx = zmq.Context()
    try:
        s = _req(ctx, bridge.port)
        bad = dict(behavior_observation(), **{"robot_r1::robot_r1:zed_link:Camera:0::rgb": np.zeros((1, 1_000_000, 3), np.uint8)})
        t0 = time.perf_counter()
        err = _call(s, {"endpoint": "get_action", "data": bad})["error"]
        took = time.perf_counter() - t0
        ok = _call(s, {"endpoint": "get_action", "data": behavior_observation()})
        s.close(0)
    finally:
        ctx.destroy(linger=0)
    assert "robot_r1::robot_r1:zed_link:Camera:0::rgb" in err and "each side" in err, err
    assert took < 5.0  # refused from the shape; the resize used to stall the bridge for 7-9 s
    assert ok["action"].shape == (23,)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_encrypts_and_authenticates_clients(server, loop, tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    _, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_pub, client_secret = zmq.auth.create_certificates(str(keys), "robot")
    _, stranger_secret = zmq.auth.create_certificates(str(keys), "stranger")
    (allowed / "robot.key").write_bytes(open(client_pub, "rb").read())
    b = ZmqBridge(ClientConfig([server.target], connect_timeout_s=1.0), BridgeConfig(host="127.0.0.1", port=0),
                  curve=CurveConfig(server_secret_file=server_secret, clients_dir=allowed))
    loop.run(b.start())
    ctx = zmq.Context()
    try:
        server_pub, _ = zmq.auth.load_certificate(server_secret)

        def keyed(secret_file):
            pub, sec = zmq.auth.load_certificate(secret_file)
            return {"curve_serverkey": server_pub, "curve_publickey": pub, "curve_secretkey": sec}
        ok = _req(ctx, b.port, **keyed(client_secret))
        assert _call(ok, {"endpoint": "ping"})["status"] == "ok"
        outcomes = {}
        for name, sock in {"plaintext": _req(ctx, b.port, timeout_ms=1500),
                           "unknown client key": _req(ctx, b.port, timeout_ms=1500, **keyed(stranger_secret))}.items():
            try:
                sock.send(packb({"endpoint": "ping"}))
                sock.recv()
                outcomes[name] = "answered"
            except zmq.ZMQError:
                # never connected (send timed out), never answered (recv timed out), or the refused
                # handshake dropped the pipe the request was queued on (recv: EFSM): all refusals
                outcomes[name] = "no answer"
            sock.close(0)
        assert _call(ok, {"endpoint": "ping"})["status"] == "ok"
        ok.close(0)
    finally:
        ctx.destroy(linger=0)
        loop.run(b.stop())
    assert outcomes == {"plaintext": "no answer", "unknown client key": "no answer"}


# ----------------------------------------------------------------------------- TLS + tokens (openpi, http)
TOKEN = "bridge-token-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.support.certs import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def _security(pki, mtls=False):
    from xvla.agents.bridges.core import ListenerSecurity

    return ListenerSecurity(pki.server_cert, pki.server_key, pki.ca if mtls else None, tokens=(TOKEN,))


def test_http_bridge_over_tls_requires_the_token(server, loop, pki):
    import json
    import ssl
    import urllib.error
    import urllib.request

    from xvla.agents.bridges.http_act import HttpActBridge

    b = HttpActBridge(ClientConfig([server.target], connect_timeout_s=1.0),
                      BridgeConfig(host="127.0.0.1", port=0, security=_security(pki)))
    loop.run(b.start())
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    try:
        def get(path, token=None):
            req = urllib.request.Request(f"https://localhost:{b.port}{path}",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
        health = get("/healthz")
        no_token = get("/describe")
        wrong = get("/describe", "x" * 30)
        ok = get("/describe", TOKEN)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext against the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{b.port}/healthz", timeout=5)
    finally:
        loop.run(b.stop())
    assert health[0] == 200 and no_token[0] == 401 and wrong[0] == 401
    assert ok[0] == 200 and json.loads(ok[1])["action_dim"] == 23


def test_openpi_bridge_over_mutual_tls_requires_cert_and_token(server, loop, pki):
    import ssl

    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    from xvla.agents.bridges.openpi_ws import OpenpiBridge

    security = _security(pki, mtls=True)
    assert security.ssl_context().num_tickets == 0  # no post-handshake tickets racing a threaded client
    b = OpenpiBridge(ClientConfig([server.target], connect_timeout_s=1.0),
                     BridgeConfig(host="127.0.0.1", port=0, security=security))
    loop.run(b.start())
    try:
        url = f"wss://localhost:{b.port}"
        client = ssl.create_default_context(cafile=str(pki.ca))
        client.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        with connect(url, ssl=client, additional_headers={"Authorization": f"Api-Key {TOKEN}"}, open_timeout=10) as ws:
            meta = unpackb(ws.recv(timeout=10))
        with pytest.raises(InvalidStatus) as no_token:
            connect(url, ssl=client, open_timeout=10)
        no_cert = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((ssl.SSLError, OSError, EOFError, ConnectionClosed, InvalidHandshake)):  # TLS 1.3: after the handshake
            with connect(url, ssl=no_cert, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=10) as ws:
                ws.recv(timeout=10)
    finally:
        loop.run(b.stop())
    assert meta["protocol"] and no_token.value.response.status_code == 401


def test_a_bridge_session_closed_for_idleness_is_reopened_transparently(loop, tmp_path):
    """The service closes a stream silent for idle_timeout_s (freeing its slot); a lock-step client that
    pauses longer (an episode reset) must still get its next action, on a fresh session."""
    from tests.runtime.fakes import FAKE_CAMERAS, FAKE_D, fake_factory, fake_policy
    from xvla.benchmarks.serving import serve_in_background
    from xvla.runtime.service import ServiceConfig
    from xvla.runtime.skills import RoutingTable

    pol = fake_policy(tmp_path / "fake")
    with serve_in_background(routes=RoutingTable.single(tmp_path / "fake"), policy_factory=fake_factory({"default": pol}),
                             config=ServiceConfig(idle_timeout_s=0.3)) as (server, port):
        b = ZmqBridge(ClientConfig([f"127.0.0.1:{port}"], connect_timeout_s=1.0), BridgeConfig(host="127.0.0.1", port=0))
        loop.run(b.start())
        ctx = zmq.Context()
        try:
            s = _req(ctx, b.port)
            obs = {"images": {n: np.zeros((8, 8, 3), np.uint8) for n in FAKE_CAMERAS}, "proprio": np.zeros(FAKE_D, np.float32)}
            first = _call(s, {"endpoint": "get_action", "data": obs})
            deadline = time.monotonic() + 10
            while server.service.sessions and time.monotonic() < deadline:  # the service closed the idle stream
                time.sleep(0.05)
            freed = server.service.sessions == 0
            second = _call(s, {"endpoint": "get_action", "data": obs})
            s.close(0)
        finally:
            ctx.destroy(linger=0)
            loop.run(b.stop())
    assert "action" in first, first
    assert freed
    assert "action" in second, second
