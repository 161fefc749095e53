"""The openpi / BEHAVIOR-1K websocket protocol, forwarded to the gRPC policy service.

Wire behaviour (what ``openpi_client.WebsocketClientPolicy`` and the BEHAVIOR-1K
harness expect):

- ``GET /healthz`` answers 200 ``OK`` when the policy service is reachable, else 503;
  any other path upgrades to a websocket.
- On connect the server sends a msgpack metadata map (the client blocks on it).
- Each binary frame is a msgpack observation map with numpy arrays (``__ndarray__``
  encoding); the reply is ``{"action": float32[23], "server_timing": {...}, ...}``.
  With ``__action_chunk_size__ = K`` the reply also carries ``action_chunk`` [K, 23]
  whose first row is ``action``.
- ``{"reset": True}`` ends the episode (the next observation starts a new session) and
  gets no reply.
- Errors (bad msgpack, wrong keys or shapes, a frame over the size limit, the service
  down) are answered with a text frame, which the openpi client raises as
  ``RuntimeError``; the connection stays open and keeps serving. Frames beyond a hard
  cap (4x the limit) are refused by the websocket layer itself (close code 1009).

One connection = one environment = one policy session.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from xvla.agents.bridges.codecs import WireError, packb, unpackb
from xvla.agents.bridges.core import BridgeConfig, BridgeCore, BridgeServer, LockstepSession, PolicyError
from xvla.agents.client import ClientConfig

log = logging.getLogger(__name__)

PROTOCOL = "openpi-websocket"


class OpenpiBridge(BridgeServer):
    def __init__(self, client_config: ClientConfig, config: BridgeConfig | None = None) -> None:
        self.config = config or BridgeConfig()
        self.core = BridgeCore(client_config, self.config)
        self._server: Server | None = None
        self.port = 0

    async def _health(self, connection: ServerConnection, request):
        if request.path.split("?")[0] == "/healthz":
            ok = await self.core.healthy()
            if ok:
                return connection.respond(http.HTTPStatus.OK, "OK\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "policy service unavailable\n")
        if not self.config.security.authorized(request.headers.get("Authorization")):
            log.warning("openpi connection refused: missing or wrong token")
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "authorization: missing or wrong token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = LockstepSession(self.core)
        peer = ws.remote_address
        log.info("openpi client %s connected", peer)
        try:
            try:
                await session.prepare()
            except PolicyError as e:
                log.warning("connected without a policy description: %s", e)
            await ws.send(packb(self.core.metadata(PROTOCOL)))
            prev_total_ms: float | None = None
            while True:
                msg = await ws.recv()
                t0 = time.perf_counter()
                try:
                    reply = await self._answer(session, msg)
                except (WireError, PolicyError) as e:
                    self.core.counters["errors"] += 1
                    log.info("error reply to %s: %s", peer, e)
                    await ws.send(f"error: {e}")
                    continue
                except Exception as e:  # noqa: BLE001 - a bug on one message must not drop the client (1011)
                    self.core.counters["errors"] += 1
                    log.exception("unexpected error answering %s", peer)
                    await ws.send(f"error: internal bridge error ({type(e).__name__})")
                    continue
                if reply is None:  # reset: no reply by protocol
                    continue
                reply["server_timing"] = {"infer_ms": (time.perf_counter() - t0) * 1e3}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send(packb(reply))
                prev_total_ms = (time.perf_counter() - t0) * 1e3
        except ConnectionClosed:
            pass
        finally:
            await session.close()
            log.info("openpi client %s disconnected", peer)

    async def _decode(self, session: LockstepSession, msg) -> dict | None:
        """One websocket frame -> the observation map; None for a reset (no reply by protocol)."""
        if isinstance(msg, str):
            raise WireError("expected binary msgpack frames, got a text frame")
        obs = unpackb(msg, max_bytes=self.config.max_message_bytes)
        if not isinstance(obs, dict):
            raise WireError(f"an observation must be a map, got {type(obs).__name__}")
        if "reset" in obs or b"reset" in obs:
            await session.reset()
            return None
        self.core.counters["requests"] += 1
        return obs

    async def _answer(self, session: LockstepSession, msg) -> dict | None:
        obs = await self._decode(session, msg)
        return None if obs is None else await session.answer(obs)

    async def start(self) -> int:
        hard_cap = 4 * self.config.max_message_bytes
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._health,
            max_size=hard_cap,
            compression=None,
            ping_interval=60,
            ping_timeout=300,
            ssl=self.config.security.ssl_context(),
        )
        for warning in self.config.security.startup_warnings(self.config.host, "the openpi bridge"):
            log.warning(warning)
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self.config.port
        log.info("openpi websocket bridge on %s://%s:%d", "wss" if self.config.security.tls_cert else "ws",
                 self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:  # idle HTTP keep-alive sockets would otherwise hold shutdown for websockets' 10 s close timeout
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                log.warning("some connections did not close within 2 s")
            self._server = None
        await self.core.close()

