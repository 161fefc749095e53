"""The robot's connection to the policy service: channels, failover, sessions, reconnects.

Three layers, each usable on its own:

- :class:`AsyncPolicyClient` (asyncio): one gRPC channel per target, unary calls
  (``Describe``, ``Infer``) and stream sessions with failover across targets. The bridges
  use it directly on their own event loop.
- :class:`RobotStream`: a long-lived, self-healing observation stream. It reconnects
  with jittered backoff (trying the next target first), keeps a watchdog on unanswered
  observations (a hung server is as dead as a killed one) and never blocks its caller:
  ``send`` drops an observation rather than wait.
- :class:`PolicyClient`: a thread-safe synchronous facade that runs the asyncio side on
  a background thread, for control loops written as plain Python.

Security: TLS (server or mutual) via :class:`TlsConfig`; a bearer token travels as
``authorization: Bearer <token>`` metadata on every call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc import aio

from xvla.agents.backoff import Backoff, BackoffConfig
from xvla.core.net import is_loopback, split_host
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc

T = TypeVar("T")
log = logging.getLogger(__name__)

# Codes after which another target (or a later attempt) may succeed.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class ServiceUnavailable(ConnectionError):
    """No target answered; the message lists what each one said."""


class SessionRejected(RuntimeError):
    """A target answered but refused the session (bad header, bad token, ...); failover will not help."""

    def __init__(self, target: str, code: grpc.StatusCode | None, details: str) -> None:
        self.target, self.code, self.details = target, code, details
        super().__init__(f"{target}: {code.name if code else 'ERROR'}: {details}")


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        self.code, self.details = code, details
        super().__init__(details)


class StreamClosed(ConnectionError):
    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        self.code, self.details = code, details
        super().__init__(f"stream closed: {code.name if code else 'EOF'}: {details}")


@dataclass
class TlsConfig:
    """PEM file paths. Without ``root_certificates`` the system roots are used."""

    root_certificates: str | None = None
    certificate_chain: str | None = None  # client certificate (mutual TLS)
    private_key: str | None = None
    server_name_override: str | None = None  # for certificates issued to another name (tests, IPs)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        if bool(self.certificate_chain) != bool(self.private_key):
            raise ValueError("tls: certificate_chain and private_key must be given together (mutual TLS)")
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.root_certificates),
            private_key=read(self.private_key),
            certificate_chain=read(self.certificate_chain),
        )


@dataclass
class ClientConfig:
    targets: list[str]  # "host:port", tried in order; the next one on failure
    token: str | None = None  # sent as "authorization: Bearer <token>"
    tls: TlsConfig | None = None
    connect_timeout_s: float = 2.0  # how long one target may take to accept a connection
    rpc_timeout_s: float = 10.0  # deadline of Describe / Infer and of the session handshake
    reply_timeout_s: float = 2.0  # an observation unanswered this long means the stream is dead
    keepalive_time_s: float = 10.0  # HTTP/2 ping interval on idle connections
    keepalive_timeout_s: float = 5.0  # a ping unanswered this long drops the connection
    # Observations sent and not yet answered, at most: a server slower than the robot then sees
    # the newest observation next (older ones are dropped here, counted), instead of a backlog
    # that grows in HTTP/2 buffers and answers every tick later than the one before.
    max_in_flight: int = 2
    max_message_bytes: int = 32 * 1024 * 1024
    backoff: BackoffConfig = field(default_factory=BackoffConfig)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        self.targets = [t.strip() for t in self.targets if t and t.strip()]
        if not self.targets:
            raise ValueError("client: at least one target (HOST:PORT) is required")
        for name in ("connect_timeout_s", "rpc_timeout_s", "reply_timeout_s", "keepalive_time_s", "keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"client: {name} must be > 0, got {getattr(self, name)}")
        if self.max_in_flight < 1:
            raise ValueError(f"client: max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"client: max_message_bytes is too small ({self.max_message_bytes})")

    def channel_options(self) -> list[tuple[str, int | str]]:
        opts: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # gRPC's own reconnect backoff starts at 1 s and grows to 120 s; ours is on top of it,
            # so keep the channel's short or a restarted server stays unreachable for minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 0),
        ]
        if self.tls and self.tls.server_name_override:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        return opts

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class _Outbox:
    """The request side of a Stream call, as an async generator that gRPC consumes.

    Feeding the call from a generator (instead of ``call.write``) keeps writes off the
    caller's path: a slow link pushes back through the one-slot queue instead of piling
    up stale observations, and ending the generator half-closes the call.
    """

    _END = object()

    def __init__(self, first: pb.StreamRequest) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self.queue.put_nowait(first)

    async def requests(self):
        while True:
            item = await self.queue.get()
            if item is self._END:
                return
            yield item

    def end(self) -> None:
        try:
            self.queue.put_nowait(self._END)
        except asyncio.QueueFull:
            pass  # the call is being cancelled anyway


class StreamSession:
    """One accepted Stream call: send observations, read replies in order."""

    def __init__(self, call: aio.StreamStreamCall, outbox: _Outbox, accepted: pb.SessionAccepted, target: str) -> None:
        self._call = call
        self._outbox = outbox
        self.accepted = accepted
        self.target = target

    @property
    def policy(self) -> pb.DescribeResponse:
        return self.accepted.policy

    async def send(self, observation: pb.Observation) -> None:
        if self._call.done():
            raise StreamClosed(await self._call.code(), await self._call.details() or "")
        await self._outbox.queue.put(pb.StreamRequest(observation=observation))

    async def recv(self) -> pb.ActionReply:
        """The next reply. Note: cancelling this (e.g. by a timeout) cancels the whole call."""
        msg = await self._call.read()
        if msg is aio.EOF:
            raise StreamClosed(await self._call.code(), await self._call.details() or "")
        if not msg.HasField("action"):
            raise StreamClosed(None, "protocol error: expected an ActionReply")
        return msg.action

    async def step(self, observation: pb.Observation, timeout: float) -> pb.ActionReply:
        """Lock-step: send one observation and wait (at most ``timeout``) for its reply."""
        await asyncio.wait_for(self.send(observation), timeout)
        while True:
            reply = await asyncio.wait_for(self.recv(), timeout)
            if reply.frame_index >= observation.frame_index:
                return reply

    async def close(self) -> None:
        self._outbox.end()
        self._call.cancel()


class AsyncPolicyClient:
    """gRPC calls with failover across targets. Use from a single event loop."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels: dict[str, aio.Channel] = {}
        self._current = 0
        self.failovers = 0

    @property
    def target(self) -> str:
        return self.config.targets[self._current]

    def rotate(self) -> None:
        """Make the next target the preferred one."""
        if len(self.config.targets) > 1:
            self._current = (self._current + 1) % len(self.config.targets)
            self.failovers += 1

    def _channel(self, target: str) -> aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            opts = self.config.channel_options()
            if self.config.tls is not None:
                ch = aio.secure_channel(target, self.config.tls.credentials(), options=opts)
            else:
                if self.config.token and not is_loopback(split_host(target)):
                    log.warning("sending the bearer token to %s in PLAINTEXT (no TLS): anyone on the path can read "
                                "and reuse it; configure TLS (--tls-ca)", target)
                ch = aio.insecure_channel(target, options=opts)
            self._channels[target] = ch
        return ch

    def _stub(self, target: str) -> pb_grpc.PolicyServiceStub:
        return pb_grpc.PolicyServiceStub(self._channel(target))

    async def _ready(self, target: str) -> None:
        await asyncio.wait_for(self._channel(target).channel_ready(), self.config.connect_timeout_s)

    async def _unary(self, method: str, request, timeout: float | None):
        errors: list[str] = []
        for _ in range(len(self.config.targets)):
            target = self.target
            try:
                await self._ready(target)
                rpc = getattr(self._stub(target), method)
                return await rpc(request, timeout=timeout or self.config.rpc_timeout_s, metadata=self.config.metadata())
            except aio.AioRpcError as e:
                if e.code() not in FAILOVER_CODES:
                    raise
                errors.append(f"{target}: {e.code().name}: {e.details()}")
            except asyncio.TimeoutError:
                errors.append(f"{target}: not reachable within {self.config.connect_timeout_s:g} s")
            self.rotate()
        raise ServiceUnavailable(f"{method}: no policy service answered ({'; '.join(errors)})")

    async def describe(self, timeout: float | None = None) -> pb.DescribeResponse:
        return await self._unary("Describe", pb.DescribeRequest(), timeout)

    async def infer(self, request: pb.InferRequest, timeout: float | None = None) -> pb.InferResponse:
        return await self._unary("Infer", request, timeout)

    async def open_stream(self, header: pb.SessionHeader) -> StreamSession:
        """Open a session on the preferred target, failing over to the others."""
        errors: list[str] = []
        for _ in range(len(self.config.targets)):
            target = self.target
            for attempt in range(3):
                try:
                    return await self._open_on(target, header)
                except aio.AioRpcError as e:
                    code, details = e.code(), e.details() or ""
                except _Refused as e:
                    code, details = e.code, e.details
                except asyncio.TimeoutError:
                    code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "no session within the deadline"
                # gRPC can report a server's immediate refusal (bad token, session limit) as
                # INTERNAL "from Core" when it races our first message; a second try shows the real status.
                if code == grpc.StatusCode.INTERNAL and attempt < 2:
                    continue
                break
            if code not in FAILOVER_CODES:
                raise SessionRejected(target, code, details)
            errors.append(f"{target}: {code.name if code else 'EOF'}: {details}")
            self.rotate()
        raise ServiceUnavailable(f"Stream: no policy service answered ({'; '.join(errors)})")

    async def _open_on(self, target: str, header: pb.SessionHeader) -> StreamSession:
        await self._ready(target)
        outbox = _Outbox(pb.StreamRequest(header=header))
        call = self._stub(target).Stream(outbox.requests(), metadata=self.config.metadata())
        try:
            first = await asyncio.wait_for(call.read(), self.config.rpc_timeout_s)
            if first is aio.EOF:
                raise _Refused(await call.code(), await call.details() or "stream ended before SessionAccepted")
            if not first.HasField("accepted"):
                raise _Refused(None, "protocol error: first reply is not SessionAccepted")
            return StreamSession(call, outbox, first.accepted, target)
        except BaseException:
            outbox.end()  # end the request iterator, then the call: no task is left behind
            call.cancel()
            raise

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


@dataclass
class StreamCounters:
    sessions: int = 0  # sessions opened (1 + reconnects)
    connect_failures: int = 0
    sent: int = 0
    replies: int = 0
    dropped: int = 0  # observations not sent: disconnected, or replaced by a newer one
    lost: int = 0  # sent but never answered (the stream died first)
    bytes_sent: int = 0
    last_error: str = ""
    target: str = ""
    # A robot/policy mismatch (the service refuses this robot's observations) does not go away by
    # reconnecting: it is reported once, here and in the log, and reconnects back off (capped).
    problem: str = ""
    backoffs: int = 0  # sessions that ended without an answer, followed by a back-off delay
    # (time.monotonic(), event, detail): session_open (target), session_end (reason), connect_failure (error)
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def event(self, kind: str, detail: str) -> None:
        if len(self.events) < 10_000:  # bounded: a flapping link must not grow memory forever
            self.events.append((time.monotonic(), kind, detail[:200]))

    @property
    def reconnects(self) -> int:
        return max(0, self.sessions - 1)


# Stream end codes that mean "this robot's observations do not fit this policy" (not an outage).
REFUSAL_CODES = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNIMPLEMENTED")

ReplyCallback = Callable[[pb.ActionReply, float], None]
StateCallback = Callable[[bool, "pb.SessionAccepted | None", str], None]


class RobotStream:
    """A session that survives server restarts. ``send`` is thread-safe and never blocks.

    Replies are delivered by ``on_reply(reply, t_received)`` on the client's event loop;
    connection changes by ``on_state(connected, accepted, reason)``. Keep both short.
    """

    def __init__(
        self,
        client: AsyncPolicyClient,
        loop: asyncio.AbstractEventLoop,
        header: pb.SessionHeader,
        on_reply: ReplyCallback,
        on_state: StateCallback | None = None,
        queue_size: int = 2,
    ) -> None:
        self._client = client
        self._loop = loop
        self._header = header
        self._on_reply = on_reply
        self._on_state = on_state or (lambda c, a, r: None)
        self._queue_size = queue_size
        self._queue: asyncio.Queue | None = None
        self._closing = asyncio.Event()
        self._backoff = Backoff(client.config.backoff)
        self.counters = StreamCounters()
        self.connected = False
        self._task: asyncio.Task | None = None

    # -- any thread ------------------------------------------------------------------
    def send(self, observation: pb.Observation) -> bool:
        """Queue ``observation``; False (and counted as dropped) when there is no live session."""
        if not self.connected:
            self.counters.dropped += 1
            return False
        self._loop.call_soon_threadsafe(self._enqueue, observation)
        return True

    # -- event loop ------------------------------------------------------------------
    def start(self) -> None:
        self._task = self._loop.create_task(self._run())

    async def aclose(self) -> None:
        self._closing.set()
        await cancel_and_wait(self._task)

    def _enqueue(self, observation: pb.Observation) -> None:
        q = self._queue
        if q is None or not self.connected:
            self.counters.dropped += 1
            return
        if q.full():  # the link is slower than the robot: the newest observation wins
            q.get_nowait()
            self.counters.dropped += 1
        q.put_nowait(observation)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _run(self) -> None:
        while not self._closing.is_set():
            try:
                session = await self._client.open_stream(self._header)
            except (ServiceUnavailable, SessionRejected) as e:
                if isinstance(e, SessionRejected) and str(e) != self.counters.problem:
                    self.counters.problem = str(e)
                    log.error("the policy service refuses this robot's session: %s (retrying with back-off)", e)
                self.counters.last_error = str(e)  # before the count: readers poll the count
                self.counters.event("connect_failure", str(e))
                self.counters.connect_failures += 1
                await self._sleep(self._backoff.next_delay())
                continue
            self.counters.sessions += 1
            self.counters.target = session.target
            replies_before = self.counters.replies
            self.counters.event("session_open", session.target)
            reason = await self._pump(session)
            self.counters.event("session_end", f"{session.target}: {reason}")
            if self._closing.is_set():
                break
            self.counters.last_error = reason
            refused = any(code in reason for code in REFUSAL_CODES)
            if refused and reason != self.counters.problem:
                self.counters.problem = reason
                log.error("the policy service refuses this robot's observations: %s "
                          "(reconnecting with back-off; this will not go away until robot or policy change)", reason)
            if refused or self.counters.replies == replies_before:
                # An error that comes back at once (mismatch, crash loop): never reconnect every tick.
                self.counters.backoffs += 1
                await self._sleep(self._backoff.next_delay())
            else:
                self._backoff.reset()
            # Prefer another target next time: the one that just failed is the least likely to work.
            self._client.rotate()

    async def _pump(self, session: StreamSession) -> str:
        self._queue = asyncio.Queue(maxsize=self._queue_size)
        outstanding: deque[tuple[int, float]] = deque()
        slot_free = asyncio.Event()
        slot_free.set()
        self.connected = True
        self._on_state(True, session.accepted, "")
        reply_timeout = self._client.config.reply_timeout_s
        max_in_flight = self._client.config.max_in_flight

        async def writer() -> None:
            assert self._queue is not None
            while True:
                while len(outstanding) >= max_in_flight:  # the queue keeps the newest meanwhile
                    slot_free.clear()
                    await slot_free.wait()
                obs = await self._queue.get()
                outstanding.append((obs.frame_index, time.monotonic()))
                await session.send(obs)
                self.counters.sent += 1
                self.counters.bytes_sent += obs.ByteSize()

        async def reader() -> None:
            while True:
                reply = await session.recv()
                now = time.monotonic()
                while outstanding and outstanding[0][0] <= reply.frame_index:
                    outstanding.popleft()
                slot_free.set()
                self.counters.replies += 1
                self._on_reply(reply, now)

        async def watchdog() -> None:
            # Sleeps until the oldest unanswered observation's deadline (not a polling period), so a
            # frozen server is given up on reply_timeout after it stopped answering, no later.
            while True:
                if not outstanding:
                    await asyncio.sleep(min(0.05, reply_timeout / 4))
                    continue
                late = time.monotonic() - outstanding[0][1]
                if late > reply_timeout:
                    raise StreamClosed(None, f"no reply for {reply_timeout:g} s (server hung?)")
                await asyncio.sleep(reply_timeout - late + 0.001)

        tasks = [asyncio.ensure_future(c()) for c in (writer, reader, watchdog)]
        reason = "closed"
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    reason = str(exc) if not isinstance(exc, aio.AioRpcError) else f"{exc.code().name}: {exc.details()}"
        finally:
            self.connected = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not self._closing.is_set():  # at a normal close the last answers are simply not awaited
                self.counters.lost += len(outstanding)
                self.counters.dropped += self._queue.qsize() if self._queue else 0
            self._queue = None
            await session.close()
            self._on_state(False, None, reason)
        return reason


class PolicyClient:
    """Synchronous, thread-safe access to the policy service (asyncio runs on a private thread)."""

    def __init__(self, config: ClientConfig | Sequence[str] | str, **overrides) -> None:
        if not isinstance(config, ClientConfig):
            config = ClientConfig(targets=list([config] if isinstance(config, str) else config), **overrides)
        elif overrides:
            raise TypeError("pass either a ClientConfig or targets + keyword options, not both")
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="xvla-agent-grpc", daemon=True)
        self._thread.start()
        self._aclient = self._call(self._make_client())
        self._streams: list[RobotStream] = []
        self._closed = False

    async def _make_client(self) -> AsyncPolicyClient:
        return AsyncPolicyClient(self.config)

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def target(self) -> str:
        return self._aclient.target

    def run_on_io_thread(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Runs ``fn`` on the thread that does this client's gRPC work (e.g. to set its scheduling)."""
        async def call() -> T:
            return fn()

        return self._call(call(), timeout)

    def describe(self, timeout: float | None = None) -> pb.DescribeResponse:
        t = timeout or self.config.rpc_timeout_s
        budget = t + self.config.connect_timeout_s * len(self.config.targets) + 1.0
        return self._call(self._aclient.describe(t), budget)

    def infer(self, request: pb.InferRequest, timeout: float | None = None) -> pb.InferResponse:
        t = timeout or self.config.rpc_timeout_s
        budget = t + self.config.connect_timeout_s * len(self.config.targets) + 1.0
        return self._call(self._aclient.infer(request, t), budget)

    def open_stream(
        self, header: pb.SessionHeader, on_reply: ReplyCallback, on_state: StateCallback | None = None
    ) -> RobotStream:
        async def make() -> RobotStream:
            s = RobotStream(self._aclient, self._loop, header, on_reply, on_state)
            s.start()
            return s

        stream = self._call(make())
        self._streams.append(stream)
        return stream

    def close_stream(self, stream: RobotStream, timeout: float = 5.0) -> None:
        self._call(stream.aclose(), timeout)
        if stream in self._streams:
            self._streams.remove(stream)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for s in list(self._streams):
                self.close_stream(s)
            self._call(self._aclient.close(), 5.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def cancel_and_wait(task: "asyncio.Task | None") -> None:
    """Cancels a background task and waits until it has finished; its own error is not ours to raise at close."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001
        pass
