"""Server security: bearer tokens checked before any handler code runs, TLS and mutual TLS end to end.

Certificates come from a throw-away CA made in the test (tests/support/certs.py, ``cryptography``).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.runtime.fakes import FAKE_CAMERAS, FAKE_D, fake_factory, fake_policy
from tests.support.certs import make_pki
from xvla.agents.client import AsyncPolicyClient, ClientConfig, TlsConfig
from xvla.benchmarks.serving import serve_in_background
from xvla.benchmarks.stream_client import synthetic_observation
from xvla.core.net import is_loopback
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.security import ServerSecurity, load_tokens, token_ok
from xvla.runtime.server import PolicyServicer
from xvla.runtime.service import ServiceConfig
from xvla.runtime.skills import RoutingTable

CAMS = [pb.CameraSpec(name=n, height=8, width=8) for n in FAKE_CAMERAS]
TOKENS = ("a" * 32, "second-token-for-rotation-0123456789")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def handler_calls(monkeypatch):
    """Counts entries into the policy handlers (every one starts with _check_ready)."""
    calls: list[str] = []
    orig = PolicyServicer._check_ready

    async def spy(self, context):
        calls.append("handler")
        return await orig(self, context)

    monkeypatch.setattr(PolicyServicer, "_check_ready", spy)
    return calls


def _server(tmp_path, security):
    pol = fake_policy(tmp_path / "fake")
    return serve_in_background(routes=RoutingTable.single(tmp_path / "fake"), policy_factory=fake_factory({"default": pol}),
                               config=ServiceConfig(batch_window_ms=1.0), security=security)


def _obs(f: int) -> pb.Observation:
    return synthetic_observation(f, CAMS, FAKE_D, np.random.default_rng(f), proprio_value=float(f))


async def _calls(ch, metadata):
    """(Describe, Infer, Stream) status codes with the given metadata."""
    stub = pb_grpc.PolicyServiceStub(ch)
    codes = []
    for call in (lambda: stub.Describe(pb.DescribeRequest(), metadata=metadata, timeout=5),
                 lambda: stub.Infer(pb.InferRequest(session=pb.SessionHeader(task_id=-1), observation=_obs(0)),
                                    metadata=metadata, timeout=5)):
        try:
            await call()
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as err:
            codes.append(err.code())

    accepted = asyncio.Event()
    authorized = any(k == "authorization" and v.startswith("Bearer ") and v[7:] in TOKENS for k, v in metadata)

    async def reqs():
        # A refused call must see its status without racing a write against it (a grpc.aio client
        # write after the server's final status fails as INTERNAL): write only once accepted.
        if not authorized:
            await asyncio.Event().wait()
        yield pb.StreamRequest(header=pb.SessionHeader(task_id=-1))
        await accepted.wait()
        yield pb.StreamRequest(observation=_obs(0))

    try:
        async for _ in stub.Stream(reqs(), metadata=metadata, timeout=5):
            accepted.set()
        codes.append(grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as err:
        codes.append(err.code())
    return codes


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong-token-xxxxxxxxxxxxxxxx"),),
                                      (("authorization", "Basic " + TOKENS[0]),), (("authorization", TOKENS[0]),)],
                         ids=["none", "wrong", "not-bearer", "no-scheme"])
async def test_unauthenticated_calls_are_refused_before_any_handler(tmp_path, handler_calls, metadata):
    async with _server(tmp_path, ServerSecurity(tokens=TOKENS)) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            codes = await _calls(ch, metadata)
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        text = server.metrics.text()
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert handler_calls == []  # the interceptor answered: no handler code ran
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes stay open
    assert 'xvla_errors_total{code="UNAUTHENTICATED"} 3.0' in text


async def test_every_listed_token_is_accepted(tmp_path, handler_calls):
    async with _server(tmp_path, ServerSecurity(tokens=TOKENS)) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for token in TOKENS:
                assert await _calls(ch, (("authorization", f"Bearer {token}"),)) == [grpc.StatusCode.OK] * 3
    assert len(handler_calls) == 6


def test_token_helpers(tmp_path):
    f = tmp_path / "tokens"
    f.write_text(f"# rotation: old and new\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    assert load_tokens(f) == TOKENS
    f.write_text("short\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        load_tokens(f)
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no token"):
        load_tokens(f)
    assert token_ok(TOKENS[1], TOKENS) and not token_ok(TOKENS[1][:-1], TOKENS) and not token_ok(None, TOKENS)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.3") and not is_loopback("")


def test_plaintext_on_a_network_address_warns():
    assert ServerSecurity().startup_warnings("0.0.0.0")
    assert not ServerSecurity().startup_warnings("127.0.0.1")
    assert not ServerSecurity(tokens=TOKENS).startup_warnings("0.0.0.0")
    with pytest.raises(ValueError, match="together"):
        ServerSecurity(tls_cert="x.pem")


async def test_tls_end_to_end_with_the_agent_client_and_token(tmp_path, pki):
    sec = ServerSecurity(pki.server_cert, pki.server_key, tokens=TOKENS)
    async with _server(tmp_path, sec) as (server, port):
        cfg = ClientConfig([f"localhost:{port}"], token=TOKENS[0], tls=TlsConfig(root_certificates=str(pki.ca)))
        client = AsyncPolicyClient(cfg)
        try:
            desc = await client.describe()
            session = await client.open_stream(pb.SessionHeader(task_id=-1))
            reply = await session.step(_obs(0), timeout=5)
            await session.close()
        finally:
            await client.close()
    assert desc.action_space.dim == FAKE_D and reply.frame_index == 0


async def test_plaintext_client_against_a_tls_port_fails_cleanly(tmp_path, pki):
    async with _server(tmp_path, ServerSecurity(pki.server_cert, pki.server_key)) as (server, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=3)
        # the server keeps serving TLS clients afterwards
        creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as ch:
            desc = await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert desc.action_space.dim == FAKE_D


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path, pki, handler_calls):
    sec = ServerSecurity(pki.server_cert, pki.server_key, pki.ca)
    async with _server(tmp_path, sec) as (server, port):
        target = f"localhost:{port}"
        ok = AsyncPolicyClient(ClientConfig([target], tls=TlsConfig(str(pki.ca), str(pki.client_cert), str(pki.client_key))))
        try:
            desc = await ok.describe()
        finally:
            await ok.close()
        outcomes = {}
        for name, creds in {
            "no client cert": grpc.ssl_channel_credentials(pki.ca.read_bytes()),
            "cert from another CA": grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.other_client_key.read_bytes(),
                                                                 pki.other_client_cert.read_bytes()),
        }.items():
            async with grpc.aio.secure_channel(target, creds) as ch:
                try:
                    await pb_grpc.PolicyServiceStub(ch).Describe(pb.DescribeRequest(), timeout=3)
                    outcomes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    outcomes[name] = err.code()
    assert desc.action_space.dim == FAKE_D
    assert outcomes == {"no client cert": grpc.StatusCode.UNAVAILABLE, "cert from another CA": grpc.StatusCode.UNAVAILABLE}
    assert len(handler_calls) == 1  # only the mTLS client's Describe reached a handler


async def test_agent_warns_when_a_token_would_travel_in_plaintext(caplog):
    with caplog.at_level(logging.WARNING, logger="xvla.agents.client"):
        for target in ("10.1.2.3:50051", "127.0.0.1:50051"):
            client = AsyncPolicyClient(ClientConfig([target], token=TOKENS[0]))
            client._channel(target)  # channels connect lazily: nothing is sent
            await client.close()
    warned = [r.getMessage() for r in caplog.records if "plaintext" in r.getMessage().lower()]
    assert len(warned) == 1 and "10.1.2.3" in warned[0] and TOKENS[0] not in warned[0]


def test_xvla_serve_flags_wire_tls_tokens_and_a_loopback_default(tmp_path, pki, capsys):
    from xvla.runtime.cli import build_parser, make_server

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS[0]}\n{TOKENS[1]}\n")
    assert build_parser().parse_args(["--bundle", str(tmp_path)]).host == "127.0.0.1"
    server = make_server(build_parser().parse_args([
        "--bundle", str(tmp_path), "--host", "0.0.0.0", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca), "--auth-token-file", str(tokens)]))
    assert server.security.tls and server.security.tls_client_ca == pki.ca and server.security.tokens == TOKENS
    assert "WARNING" not in capsys.readouterr().err
    make_server(build_parser().parse_args(["--bundle", str(tmp_path), "--host", "0.0.0.0"]))
    assert "PLAINTEXT without authentication on 0.0.0.0" in capsys.readouterr().err
