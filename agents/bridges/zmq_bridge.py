"""ZeroMQ REQ/REP + msgpack (the GR00T deployment style), forwarded to the gRPC service.

Request: a msgpack map ``{"endpoint": str, "data": {...}, "api_token"?: str}``.
Reply: a msgpack map; failures are ``{"error": "<message naming the field>"}`` and the
bridge keeps serving (REP must answer every request, so even an undecodable or
oversized frame gets an error reply).

Endpoints:
- ``ping`` -> ``{"status": "ok"}``
- ``describe`` (alias ``get_modality_config``) -> the policy description
- ``reset`` -> ``{"status": "ok"}``; the next ``get_action`` starts a new episode
- ``get_action`` -> ``{"action": float32[D], "skill", "source", "server_timing"}``;
  ``data`` is an observation in the BEHAVIOR-1K keys or the neutral form
  (``{"images": {...}, "proprio": [...], "task_id"?, "instruction"?}``). With
  ``"__action_chunk_size__": K`` in ``data`` the reply also has ``action_chunk`` [K, D].

Transport: a ROUTER socket, so every client (ZeroMQ identity: one REQ socket) gets its own
policy session (one client's ``reset`` never restarts another's); idle clients are dropped
after ``client_idle_s`` and at most ``max_clients`` are served at once. A request must be one
frame: a multipart request gets an error reply (it used to kill the bridge). CURVE
(:class:`CurveConfig`) encrypts and, with a folder of client public keys, authenticates.

Arrays may use openpi's ``__ndarray__`` maps or GR00T's ``__ndarray_class__`` .npy
maps; replies use whichever style the request used.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from xvla.agents.bridges.codecs import ArrayStyle, WireError, packb, unpackb, uses_style
from xvla.agents.bridges.core import BridgeConfig, BridgeCore, LockstepSession, PolicyError
from xvla.agents.client import ClientConfig, cancel_and_wait
from xvla.core.limits import bounded

log = logging.getLogger(__name__)

PROTOCOL = "zmq-msgpack"
ENDPOINTS = ("ping", "describe", "get_modality_config", "reset", "get_action")


@dataclass
class CurveConfig:
    """ZeroMQ CURVE: the bridge's secret certificate (``zmq.auth.create_certificates``) and, optionally,
    a folder of client public certificates; without it any client that knows the server key may talk
    (encrypted, but not authenticated: pair it with ``api_token``)."""

    server_secret_file: Path
    clients_dir: Path | None = None


@dataclass
class _Client:
    session: LockstepSession
    lock: asyncio.Lock
    last_used: float


class ZmqBridge:
    def __init__(self, client_config: ClientConfig, config: BridgeConfig | None = None, api_token: str | None = None,
                 curve: CurveConfig | None = None, max_clients: int = 64, client_idle_s: float = 300.0) -> None:
        self.config = config or BridgeConfig(port=5555)
        self.core = BridgeCore(client_config, self.config)
        self.api_token = api_token
        self.curve = curve
        self.max_clients = max_clients
        self.client_idle_s = client_idle_s
        self.clients: dict[bytes, _Client] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._auth = None
        self._task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> int:
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Frames past the hard cap are dropped by ZeroMQ itself (it disconnects the peer);
        # between the limit and the cap the bridge answers with an error.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.config.max_message_bytes)
        if self.curve is not None:
            self._start_curve()
        host = "*" if self.config.host in ("0.0.0.0", "", "*") else self.config.host
        if self.config.port:
            self._sock.bind(f"tcp://{host}:{self.config.port}")
            self.port = self.config.port
        else:
            self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        self._task = asyncio.ensure_future(self._serve())
        log.info("ZeroMQ bridge on tcp://%s:%d%s", host, self.port, " (CURVE)" if self.curve else "")
        return self.port

    def _start_curve(self) -> None:
        import zmq.auth
        from zmq.auth.asyncio import AsyncioAuthenticator

        assert self._ctx is not None and self._sock is not None and self.curve is not None
        if not zmq.has("curve"):
            raise ValueError("zmq: this libzmq was built without CURVE support")
        public, secret = zmq.auth.load_certificate(str(self.curve.server_secret_file))
        if not secret:
            raise ValueError(f"zmq curve: {self.curve.server_secret_file} holds no secret key")
        self._auth = AsyncioAuthenticator(self._ctx)
        self._auth.start()
        location = str(self.curve.clients_dir) if self.curve.clients_dir else zmq.auth.CURVE_ALLOW_ANY
        self._auth.configure_curve(domain="*", location=location)
        self._sock.curve_secretkey = secret
        self._sock.curve_publickey = public
        self._sock.curve_server = True

    async def _serve(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart()
            # REQ peers send [identity, b"", payload]; DEALER peers may omit the empty delimiter
            cut = frames.index(b"", 1) + 1 if b"" in frames[1:] else 1
            envelope, body = frames[:cut], frames[cut:]
            if len(body) != 1:
                self.core.counters["errors"] += 1
                await self._send(envelope, {"error": f"request: one msgpack frame per request, got {len(body)} frames "
                                                     "(multipart requests are not supported)"}, ArrayStyle.OPENPI)
                continue
            client = self._client_for(envelope[0])
            if client is None:
                self.core.counters["errors"] += 1
                await self._send(envelope, {"error": f"max_clients: {self.max_clients} clients are connected; "
                                                     "retry later"}, ArrayStyle.OPENPI)
                continue
            task = asyncio.ensure_future(self._handle(client, envelope, body[0]))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _client_for(self, identity: bytes) -> _Client | None:
        now = time.monotonic()
        c = self.clients.get(identity)
        if c is None:
            if len(self.clients) >= self.max_clients:
                self._evict_idle(now)
            if len(self.clients) >= self.max_clients:
                return None
            c = self.clients[identity] = _Client(LockstepSession(self.core), asyncio.Lock(), now)
        c.last_used = now
        return c

    def _evict_idle(self, now: float) -> None:
        for ident, c in list(self.clients.items()):
            if now - c.last_used > self.client_idle_s and not c.lock.locked():
                del self.clients[ident]
                task = asyncio.ensure_future(c.session.close())
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)

    async def _handle(self, client: _Client, envelope: list[bytes], raw: bytes) -> None:
        style = ArrayStyle.GR00T if uses_style(raw, ArrayStyle.GR00T) else ArrayStyle.OPENPI
        async with client.lock:  # one request at a time per client: its frames stay in order
            t0 = time.perf_counter()
            try:
                reply = await self._answer(client.session, raw)
                reply.setdefault("server_timing", {"infer_ms": (time.perf_counter() - t0) * 1e3})
            except (WireError, PolicyError) as e:
                self.core.counters["errors"] += 1
                reply = {"error": bounded(str(e))}
            except Exception as e:  # noqa: BLE001 - every request is answered, whatever happened
                log.exception("unexpected error in the ZeroMQ bridge")
                self.core.counters["errors"] += 1
                reply = {"error": bounded(f"internal error: {type(e).__name__}: {e}")}
            client.last_used = time.monotonic()
        await self._send(envelope, reply, style)

    async def _send(self, envelope: list[bytes], reply: dict, style: ArrayStyle) -> None:
        if self._sock is None:
            return
        try:
            payload = packb(reply, style)
        except Exception as e:  # noqa: BLE001 - a reply that cannot be encoded still answers
            payload = packb({"error": bounded(f"internal error: reply not encodable: {e}")}, ArrayStyle.OPENPI)
        await self._sock.send_multipart([*envelope, payload])

    async def _answer(self, session: LockstepSession, raw: bytes) -> dict:
        req = unpackb(raw, max_bytes=self.config.max_message_bytes)
        if not isinstance(req, dict):
            raise WireError(f"a request must be a map with an 'endpoint', got {type(req).__name__}")
        if self.api_token is not None:
            token = req.get("api_token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.api_token.encode()):
                raise WireError("api_token: missing or wrong")
        endpoint = req.get("endpoint", "get_action")
        if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
            raise WireError(f"endpoint: unknown endpoint {bounded(repr(endpoint), 64)} (known: {', '.join(ENDPOINTS)})")
        if endpoint == "ping":
            return {"status": "ok", "message": "xvla-agent ZeroMQ bridge"}
        if endpoint in ("describe", "get_modality_config"):
            await session.prepare()
            return self.core.metadata(PROTOCOL)
        if endpoint == "reset":
            await session.reset()
            return {"status": "ok"}
        self.core.counters["requests"] += 1
        data = req.get("data")
        if not isinstance(data, dict):
            raise WireError("data: get_action needs an observation map")
        return await session.answer(data)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for task in list(self._handlers):
            await cancel_and_wait(task)
        for c in self.clients.values():
            await c.session.close()
        self.clients.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)  # closes any socket left (auth pipe): term() could block forever
            self._ctx = None
        await self.core.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            assert self._task is not None
            await self._task
        finally:
            await self.stop()
