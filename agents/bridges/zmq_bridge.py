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

Arrays may use openpi's ``__ndarray__`` maps or GR00T's ``__ndarray_class__`` .npy
maps; replies use whichever style the request used.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

import zmq
import zmq.asyncio

from xvla.agents.bridges.codecs import ArrayStyle, WireError, packb, unpackb, uses_style
from xvla.agents.bridges.core import BridgeConfig, BridgeCore, LockstepSession, PolicyError
from xvla.agents.client import ClientConfig, cancel_and_wait

log = logging.getLogger(__name__)

PROTOCOL = "zmq-msgpack"
ENDPOINTS = ("ping", "describe", "get_modality_config", "reset", "get_action")


class ZmqBridge:
    def __init__(self, client_config: ClientConfig, config: BridgeConfig | None = None, api_token: str | None = None) -> None:
        self.config = config or BridgeConfig(port=5555)
        self.core = BridgeCore(client_config, self.config)
        self.api_token = api_token
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> int:
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Frames past the hard cap are dropped by ZeroMQ itself (it disconnects the peer);
        # between the limit and the cap the bridge answers with an error.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.config.max_message_bytes)
        host = "*" if self.config.host in ("0.0.0.0", "", "*") else self.config.host
        if self.config.port:
            self._sock.bind(f"tcp://{host}:{self.config.port}")
            self.port = self.config.port
        else:
            self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        self._task = asyncio.ensure_future(self._serve())
        log.info("ZeroMQ bridge on tcp://%s:%d", host, self.port)
        return self.port

    async def _serve(self) -> None:
        assert self._sock is not None
        session = LockstepSession(self.core)
        try:
            while True:
                raw = await self._sock.recv()
                style = ArrayStyle.GR00T if uses_style(raw, ArrayStyle.GR00T) else ArrayStyle.OPENPI
                t0 = time.perf_counter()
                try:
                    reply = await self._answer(session, raw)
                    reply.setdefault("server_timing", {"infer_ms": (time.perf_counter() - t0) * 1e3})
                except (WireError, PolicyError) as e:
                    self.core.counters["errors"] += 1
                    reply = {"error": str(e)}
                except Exception as e:  # noqa: BLE001 - REP must answer, whatever happened
                    log.exception("unexpected error in the ZeroMQ bridge")
                    self.core.counters["errors"] += 1
                    reply = {"error": f"internal error: {type(e).__name__}: {e}"}
                await self._sock.send(packb(reply, style))
        finally:
            await session.close()

    async def _answer(self, session: LockstepSession, raw: bytes) -> dict:
        req = unpackb(raw, max_bytes=self.config.max_message_bytes)
        if not isinstance(req, dict):
            raise WireError(f"a request must be a map with an 'endpoint', got {type(req).__name__}")
        if self.api_token is not None:
            token = req.get("api_token")
            if not isinstance(token, str) or not hmac.compare_digest(token, self.api_token):
                raise WireError("api_token: missing or wrong")
        endpoint = req.get("endpoint", "get_action")
        if endpoint not in ENDPOINTS:
            raise WireError(f"endpoint: unknown endpoint {endpoint!r} (known: {', '.join(ENDPOINTS)})")
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
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        await self.core.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            assert self._task is not None
            await self._task
        finally:
            await self.stop()
