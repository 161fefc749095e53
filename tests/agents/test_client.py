"""PolicyClient: failover across targets, deadlines, message-size limits, bearer token, TLS."""

from __future__ import annotations

import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest
from grpc import aio

from tests.agents.fake_server import FakeBehaviour, FakeServer
from tests.agents.helpers import LoopThread, free_port
from xvla.agents.client import (
    AsyncPolicyClient,
    ClientConfig,
    PolicyClient,
    ServiceUnavailable,
    SessionRejected,
    TlsConfig,
)
from xvla.agents.control_loop import default_header
from xvla.agents.observation import ObservationEncoder
from xvla.agents.sim_r1pro import SimR1Pro
from xvla.proto import policy_pb2 as pb


def test_failover_to_the_next_target():
    dead = f"127.0.0.1:{free_port()}"
    with FakeServer() as srv, PolicyClient(ClientConfig([dead, srv.target], connect_timeout_s=0.3)) as client:
        t = time.monotonic()
        assert client.describe().model_name == "fake"
        assert time.monotonic() - t < 3.0
        assert client.target == srv.target  # the live one is now preferred


def test_no_target_is_a_clear_error_naming_each():
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with PolicyClient(ClientConfig([a, b], connect_timeout_s=0.2)) as client:
        with pytest.raises(ServiceUnavailable) as e:
            client.describe()
    assert a in str(e.value) and b in str(e.value)


def test_bearer_token_in_metadata():
    with FakeServer(FakeBehaviour(token="t0k3n")) as srv:
        with PolicyClient(ClientConfig([srv.target], token="t0k3n")) as ok:
            assert ok.describe().model_name == "fake"
        with PolicyClient(ClientConfig([srv.target], token="wrong")) as bad:
            with pytest.raises(aio.AioRpcError) as e:  # not a failover case: a clear refusal
                bad.describe()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            replies = []
            stream = bad.open_stream(default_header(), lambda r, t: replies.append(r))
            # The robot keeps retrying (with backoff) and reports why it cannot get a session.
            # (gRPC may show an immediate refusal as INTERNAL once in a while; a retry shows the real code.)
            deadline = time.monotonic() + 10
            while "UNAUTHENTICATED" not in stream.counters.last_error and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "UNAUTHENTICATED" in stream.counters.last_error, stream.counters
            assert stream.counters.sessions == 0 and stream.counters.connect_failures >= 1 and not replies
            bad.close_stream(stream)


def test_deadline_and_message_size_limit():
    with FakeServer(FakeBehaviour(delay_s=1.0)) as srv, PolicyClient(ClientConfig([srv.target], max_message_bytes=100_000)) as client:
        obs = ObservationEncoder(client.describe()).encode(0, SimR1Pro().read_observation()).observation  # ~450 kB
        with pytest.raises(aio.AioRpcError) as e:
            client.infer(pb.InferRequest(observation=obs))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = pb.InferRequest(observation=pb.Observation(proprio=pb.Tensor(dtype=pb.FLOAT32, shape=[23], data=bytes(92))))
        t = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="DEADLINE_EXCEEDED"):  # the only target ran out of time
            client.infer(small, timeout=0.2)
        assert time.monotonic() - t < 1.0
        assert client.infer(small, timeout=5.0).actions.shape == [30, 23]


def _obs(frame: int) -> pb.Observation:
    return pb.Observation(frame_index=frame, proprio=pb.Tensor(dtype=pb.FLOAT32, shape=[23], data=bytes(92)))


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_a_slow_server_gets_the_newest_observation_not_a_backlog(max_in_flight):
    """The robot ticks faster than replies come back: at most ``max_in_flight`` observations are
    unanswered at the server, the rest are dropped on the robot (counted), and the newest goes next.
    Without the bound every observation was written and the server answered each one later than
    the one before (16 soak robots on 2 cores: 24 s behind after 2 minutes)."""
    with FakeServer(FakeBehaviour(delay_s=0.2)) as srv, \
            PolicyClient(ClientConfig([srv.target], max_in_flight=max_in_flight)) as client:
        got: list[int] = []
        stream = client.open_stream(default_header(), lambda rep, t: got.append(rep.frame_index))
        deadline = time.monotonic() + 5
        while not stream.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        n = 60
        for f in range(n):  # 60 ticks at 100 Hz against 0.2 s per reply
            stream.send(_obs(f))
            time.sleep(0.01)
        while (not got or got[-1] != n - 1) and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        client.close_stream(stream)
    rec = srv.record
    assert got and got[-1] == n - 1, "the newest observation is answered"
    assert got == sorted(got) and len(set(got)) == len(got)
    assert 1 <= rec.max_unanswered <= max_in_flight
    assert len(rec.observations) < n / 2  # most ticks never left the robot ...
    assert stream.counters.dropped + stream.counters.sent == n  # ... and every one is accounted for
    assert stream.counters.sent == len(rec.observations)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="max_in_flight"):
        ClientConfig(["a:1"], max_in_flight=0)
    with pytest.raises(ValueError, match="at least one target"):
        ClientConfig([])
    with pytest.raises(ValueError, match="reply_timeout_s must be > 0"):
        ClientConfig(["a:1"], reply_timeout_s=0)
    with pytest.raises(ValueError, match="given together"):
        TlsConfig(certificate_chain="x").credentials()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available to make a test certificate")
def test_tls(tmp_path):
    key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=policy.test",
                        "-addext", "subjectAltName=DNS:policy.test", "-keyout", str(key), "-out", str(crt)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with FakeServer(tls=(key.read_bytes(), crt.read_bytes())) as srv:
        tls = TlsConfig(root_certificates=str(crt), server_name_override="policy.test")
        with PolicyClient(ClientConfig([srv.target], tls=tls, connect_timeout_s=2.0)) as client:
            assert client.describe().model_name == "fake"
            got = []
            stream = client.open_stream(default_header(), lambda rep, t: got.append(rep.frame_index))
            deadline = time.monotonic() + 5
            while not stream.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            obs = pb.Observation(frame_index=3, proprio=pb.Tensor(dtype=pb.FLOAT32, shape=[23], data=np.zeros(23, np.float32).tobytes()))
            assert stream.send(obs)
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got == [3]
            client.close_stream(stream)
        with PolicyClient(ClientConfig([srv.target], connect_timeout_s=0.5)) as plain:
            with pytest.raises(ServiceUnavailable):  # plaintext cannot talk to the TLS port
                plain.describe()


def test_session_rejected_is_not_failover():
    with FakeServer(FakeBehaviour(token="x")) as srv, LoopThread() as lt:
        c = lt.run(_make(ClientConfig([srv.target, f"127.0.0.1:{free_port()}"])))
        try:
            with pytest.raises(SessionRejected) as e:
                lt.run(c.open_stream(default_header()))
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and c.failovers == 0
        finally:
            lt.run(c.close())


async def _make(cfg: ClientConfig) -> AsyncPolicyClient:
    return AsyncPolicyClient(cfg)
