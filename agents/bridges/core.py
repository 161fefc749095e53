"""What every bridge shares: the policy connection, its description, lock-step sessions.

The clients behind bridges (the BEHAVIOR harness, GR00T-style tools, X-VLA eval
scripts) are lock-step: they send an observation and wait for its action. A bridge
turns each such client into one policy session on the gRPC stream, numbering frames
itself, and answers ``__action_chunk_size__`` / whole-chunk requests with the unary
``Infer``. Transport failures get one retry on a fresh session (which may be on the
next target); the client sees an error message only if that fails too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc import aio

from xvla.agents.bridges.codecs import WireError
from xvla.agents.bridges.observations import PolicyView, chunk_size, translate
from xvla.agents.client import (
    FAILOVER_CODES,
    AsyncPolicyClient,
    ClientConfig,
    ServiceUnavailable,
    SessionRejected,
    StreamClosed,
    StreamSession,
)
from xvla.agents.observation import ObservationEncoder
from xvla.core.auth import load_tokens, token_from_header, token_ok
from xvla.core.embodiments.r1pro import R1PRO_DOMAIN_ID
from xvla.core.net import is_loopback
from xvla.core.tensors import numpy_to_tensor, tensor_to_numpy
from xvla.proto import policy_pb2 as pb

log = logging.getLogger(__name__)


class PolicyError(RuntimeError):
    """The policy service could not produce an answer; the message is safe to show the client.

    ``code``: the gRPC status name when the service itself refused the request (e.g.
    ``INVALID_ARGUMENT`` for a domain id out of range: the client's fault, not an outage).
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ListenerSecurity:
    """TLS (mutual when ``tls_client_ca`` is given) and bearer tokens for a bridge's listener: one
    implementation for the websocket (openpi) and HTTP (/act) bridges; ZeroMQ uses CURVE instead.
    Health endpoints (``/healthz``) stay open for probes; everything else needs a token if any is set."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("bridge: --tls-cert and --tls-key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("bridge: --tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    @classmethod
    def from_files(cls, tls_cert=None, tls_key=None, tls_client_ca=None, auth_token_file=None) -> "ListenerSecurity":
        return cls(Path(tls_cert) if tls_cert else None, Path(tls_key) if tls_key else None,
                   Path(tls_client_ca) if tls_client_ca else None,
                   load_tokens(auth_token_file, "--listen-token-file") if auth_token_file else ())

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # No TLS 1.3 session tickets. They arrive after the handshake, while a threaded client
        # (websockets.sync, i.e. openpi's client) reads on one thread and writes its upgrade request
        # on another, racing on one OpenSSL object: 2 of 1,800 mTLS connects here lost the
        # handshake (timeout / "[SSL] internal error"), 0 of 2,100 without tickets. Robots keep
        # their connection, so resumption buys nothing.
        ctx.num_tickets = 0
        ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        if self.tls_client_ca is not None:
            ctx.load_verify_locations(str(self.tls_client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def authorized(self, authorization: str | None) -> bool:
        return not self.tokens or token_ok(token_from_header(authorization), self.tokens)

    def startup_warnings(self, host: str, what: str) -> list[str]:
        if is_loopback(host) or self.tls_cert or self.tokens:
            return []
        return [f"{what} listens in PLAINTEXT without authentication on {host}: anyone who reaches it can drive "
                "the robot; give --listen-token-file and --listen-tls-cert/--listen-tls-key"]


@dataclass
class BridgeConfig:
    host: str = "127.0.0.1"  # loopback unless asked: a bridge drives a robot
    port: int = 8000
    max_message_bytes: int = 64 * 1024 * 1024  # larger requests get an error reply
    reply_timeout_s: float = 10.0  # per action; covers a cold first chunk on a slow machine
    describe_ttl_s: float = 30.0  # re-read Describe this often (a failover target may differ)
    robot_id: str = "bridge"
    domain_id: int = R1PRO_DOMAIN_ID
    instruction: str = ""
    execution: pb.ExecutionSettings = field(default_factory=pb.ExecutionSettings)
    # Task -> the service route (specialist bundle) that serves it, keyed by the policy's task id (as a
    # string) or task name; unlisted tasks take the service's own routing (skill gate, default route).
    task_routes: dict[str, str] = field(default_factory=dict)
    security: ListenerSecurity = field(default_factory=ListenerSecurity)

    def header(self, task_id: int | None, route: str = "") -> pb.SessionHeader:
        return pb.SessionHeader(
            robot_id=self.robot_id,
            task_id=-1 if task_id is None else task_id,
            instruction=self.instruction,
            domain_id=self.domain_id,
            control_rate_hz=30.0,
            execution=self.execution,
            route=route,
        )

    def route_for(self, task_id: int | None, task_name: str = "") -> str:
        if task_id is None or not self.task_routes:
            return ""
        return self.task_routes.get(str(task_id)) or self.task_routes.get(task_name, "")


class BridgeCore:
    """The policy side of a bridge: one AsyncPolicyClient, a cached Describe, health."""

    def __init__(self, client_config: ClientConfig, config: BridgeConfig) -> None:
        self.config = config
        self.client_config = client_config
        self.client: AsyncPolicyClient | None = None  # made on the bridge's event loop
        self._policy: PolicyView | None = None
        self._policy_t = 0.0
        self._lock: asyncio.Lock | None = None
        self.counters = {"requests": 0, "errors": 0, "resets": 0}

    def _client(self) -> AsyncPolicyClient:
        if self.client is None:
            self.client = AsyncPolicyClient(self.client_config)
            self._lock = asyncio.Lock()
        return self.client

    async def policy(self, timeout: float = 5.0) -> PolicyView:
        """The served policy's description (cached); raises PolicyError when no service answers."""
        client = self._client()
        assert self._lock is not None
        async with self._lock:
            if self._policy is not None and time.monotonic() - self._policy_t < self.config.describe_ttl_s:
                return self._policy
            try:
                d = await client.describe(timeout)
            except (ServiceUnavailable, aio.AioRpcError) as e:
                if self._policy is not None:
                    return self._policy  # stale beats nothing; the step itself will report the outage
                raise PolicyError(f"policy service unavailable: {e}") from e
            self._policy, self._policy_t = PolicyView.from_describe(d), time.monotonic()
            return self._policy

    async def healthy(self) -> bool:
        try:
            self._policy_t = 0.0  # force a fresh Describe: health must reflect the service now
            await self.policy(timeout=1.0)
            return True
        except PolicyError:
            return False

    def metadata(self, protocol: str) -> dict:
        """Sent to openpi clients on connect and by ZeroMQ ``describe``: plain msgpack types only."""
        p = self._policy
        meta: dict = {"server": "xvla-agent-bridge", "protocol": protocol, "supports_action_chunk": True}
        if p is not None:
            d = p.describe
            meta.update(
                policy_kind=d.policy_kind,
                model_name=d.model_name,
                action_dim=p.action_dim,
                action_mode=d.action_space.mode,
                action_names=list(d.action_space.names),
                horizon=p.horizon,
                control_rate_hz=d.control_rate_hz,
                cameras={c.name: [c.height, c.width] for c in d.cameras},
                accepted_proprio_dims=list(p.accepted_proprio_dims),
                tasks=[{"id": t.id, "name": t.name} for t in d.tasks],  # str keys only: clients unpack strictly
            )
        return meta

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


class BridgeServer:
    """What every bridge process does with its listener: start, serve until cancelled, stop cleanly."""

    async def start(self) -> int:  # pragma: no cover - each bridge binds its own listener
        raise NotImplementedError

    async def stop(self) -> None:  # pragma: no cover
        raise NotImplementedError

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()


class LockstepSession:
    """One lock-step client of a bridge = one policy session. Use from one task at a time."""

    def __init__(self, core: BridgeCore) -> None:
        self.core = core
        self._session: StreamSession | None = None
        self._task_id: int | None = None
        self._frame = 0
        self._policy: PolicyView | None = None
        self.encoder = ObservationEncoder()

    async def prepare(self) -> PolicyView:
        policy = await self.core.policy()
        self._policy = policy
        self.encoder.set_policy(policy.describe)
        return policy

    def _header(self, task_id: int | None) -> pb.SessionHeader:
        """The BEHAVIOR harness always sends a task_id; only policies with task prompts (v20) take one."""
        tasks = {int(t.id): t.name for t in self._policy.describe.tasks} if self._policy is not None else {}
        route = self.core.config.route_for(task_id, tasks.get(task_id, "") if task_id is not None else "")
        return self.core.config.header(task_id if tasks else None, route)

    async def _open(self) -> StreamSession:
        try:
            s = await self.core._client().open_stream(self._header(self._task_id))
        except ServiceUnavailable as e:
            raise PolicyError(f"policy service unavailable: {e}") from e
        except SessionRejected as e:
            raise PolicyError(f"policy session refused: {e}") from e
        self._frame = 0
        return s

    async def step(self, observation: pb.Observation, task_id: int | None) -> tuple[np.ndarray, pb.ActionReply]:
        """Send one observation on the session, return the action for it."""
        if task_id != self._task_id:  # a new task is a new episode: new session
            await self._drop()
            self._task_id = task_id
        timeout = self.core.config.reply_timeout_s
        for attempt in (0, 1):
            if self._session is None:
                self._session = await self._open()
            observation.frame_index = self._frame
            try:
                reply = await self._session.step(observation, timeout)
            except (StreamClosed, aio.AioRpcError, asyncio.TimeoutError) as e:
                await self._drop()
                code = getattr(e, "code", None)
                code = code() if callable(code) else code
                transient = isinstance(e, asyncio.TimeoutError) or code is None or code in FAILOVER_CODES or code == grpc.StatusCode.CANCELLED
                if transient and attempt == 0:
                    self.core._client().rotate()
                    continue
                if isinstance(e, asyncio.TimeoutError):
                    raise PolicyError(f"the policy service did not answer within {timeout:g} s") from e
                raise PolicyError(f"policy service error: {getattr(e, 'details', None) or e}") from e
            self._frame += 1
            action = tensor_to_numpy(reply.action, "reply.action").astype(np.float32).reshape(-1)
            return action, reply
        raise AssertionError("unreachable")

    async def chunk(self, observation: pb.Observation, task_id: int | None, k: int | None = None, steps: int = 0,
                    instruction: str | None = None, domain_id: int | None = None,
                    noise: np.ndarray | None = None) -> tuple[np.ndarray, pb.InferResponse]:
        """A whole action chunk for one observation (unary Infer): [k or T, D]; ``noise`` [T, Dm] fixes the draw."""
        header = self._header(task_id)
        if steps:
            header.execution.denoising_steps = steps
        if instruction is not None:
            header.instruction = instruction
        if domain_id is not None:
            header.domain_id = domain_id
        observation.frame_index = self._frame
        request = pb.InferRequest(session=header, observation=observation)
        if noise is not None:
            request.noise.CopyFrom(numpy_to_tensor(np.ascontiguousarray(noise, np.float32)))
        try:
            resp = await self.core._client().infer(request, timeout=self.core.config.reply_timeout_s)
        except ServiceUnavailable as e:
            raise PolicyError(f"policy service unavailable: {e}") from e
        except aio.AioRpcError as e:
            raise PolicyError(f"policy service error: {e.code().name}: {e.details()}", e.code().name) from e
        actions = tensor_to_numpy(resp.actions, "response.actions").astype(np.float32)
        if actions.ndim != 2:
            raise PolicyError(f"policy returned actions of shape {list(actions.shape)}, expected [T, D]")
        if k is not None:
            if k > len(actions):
                raise WireError(f"__action_chunk_size__: {k} exceeds the policy's chunk of {len(actions)}")
            actions = actions[:k]
        self._frame += len(actions)  # the client will execute them before it asks again
        return actions, resp

    async def answer(self, data: dict) -> dict:
        """One request of a lock-step protocol (openpi websocket, ZeroMQ): the action for this
        observation, or the first ``__action_chunk_size__`` actions of a fresh chunk when the
        request asks for them; a batched request (leading batch axis) gets one back."""
        policy = await self.prepare()
        k = chunk_size(data, policy.horizon)
        # decoding checks and the resize of full camera frames take milliseconds each: in a worker
        # thread, so one client's frames never stall the bridge's other connections (or its health)
        b = await asyncio.to_thread(translate, data, policy, self.encoder)
        if k is not None:
            actions, resp = await self.chunk(b.observation, b.task_id, k)
            out: dict = {"action": actions[0], "action_chunk": actions, "skill": resp.skill}
        else:
            action, reply = await self.step(b.observation, b.task_id)
            out = {"action": action, "skill": reply.skill, "progress": float(reply.progress),
                   "source": _source_name(reply.source)}
        if b.batched:
            out = {key: (v[None] if isinstance(v, np.ndarray) else v) for key, v in out.items()}
        return out

    async def _drop(self) -> None:
        s, self._session = self._session, None
        if s is not None:
            await s.close()

    async def reset(self) -> None:
        await self._drop()
        self._frame = 0
        self.core.counters["resets"] += 1

    async def close(self) -> None:
        await self._drop()


def _source_name(source: int) -> str:
    try:
        return pb.ActionSource.Name(source)
    except ValueError:
        return str(source)
