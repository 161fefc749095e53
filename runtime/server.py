"""The gRPC front of the policy service (grpc.aio): PolicyService (Stream, Infer, Describe),
grpc.health.v1, server reflection, message-size limits, graceful shutdown.

Lifecycle: the port opens first with health NOT_SERVING, engines load and warm up in a
worker thread, then health turns SERVING. Shutdown reverses it: NOT_SERVING, every open
stream is ended with UNAVAILABLE ("shutting down", so robots reconnect elsewhere), the
in-flight unary calls get ``grace`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xvla.core.errors import InputError
from xvla.core.limits import bounded
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.metrics import Metrics
from xvla.runtime.security import DecodeGuardInterceptor, ServerSecurity
from xvla.runtime.service import EngineWrapper, PolicyFactory, PolicyService, ServiceConfig
from xvla.runtime.session import Session
from xvla.runtime.skills import RoutingTable

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name  # xvla.policy.v1.PolicyService


class ShuttingDown(Exception):
    pass


class IdleTimeout(Exception):
    pass


def _consume(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.shutdown_event = asyncio.Event()
        self.open_streams = 0

    async def _fail(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.service.metrics.errors.labels(code.name).inc()
        await context.abort(code, bounded(message))  # never echo a huge input back (field name first)

    async def _check_ready(self, context: grpc.aio.ServicerContext) -> None:
        if self.shutdown_event.is_set():
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "policy server is shutting down")
        if not self.service.ready:
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "policy server is still loading engines (health: NOT_SERVING)")

    # ------------------------------------------------------------------ Stream
    async def Stream(self, request_iterator: AsyncIterator[pb.StreamRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        await self._check_ready(context)
        svc = self.service
        cfg = svc.config
        # a slot is taken when the stream opens, not when its header arrives: opening streams and
        # sending headers later (or never) must not get past the limit
        if svc.sessions >= cfg.max_sessions:
            await self._fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"max_sessions: limit of {cfg.max_sessions} open streams reached; retry later or elsewhere")
        svc.sessions += 1
        self.open_streams += 1
        svc.metrics.sessions.set(svc.sessions)
        held = [True]

        def release() -> None:
            """Frees the slot (once). Called before any final status: context.abort sends the status at
            once, so a client that saw it must also see the slot free (and the gauge down)."""
            if held[0]:
                held[0] = False
                svc.sessions -= 1
                self.open_streams -= 1
                svc.metrics.sessions.set(svc.sessions)
        inner = self._run_stream(request_iterator, context, release)
        try:
            async for out in inner:
                yield out
        finally:
            await inner.aclose()  # the session's own clean-up first, then the slot
            release()

    async def _run_stream(self, request_iterator, context, release) -> AsyncIterator[pb.StreamResponse]:
        svc = self.service
        cfg = svc.config
        it = request_iterator.__aiter__()
        try:
            first = await self._next(it, stop_on_shutdown=True, timeout=cfg.header_timeout_s)
        except ShuttingDown:
            release()
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "policy server is shutting down")
        except IdleTimeout:
            release()
            await self._fail(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"header: no SessionHeader within header_timeout_s={cfg.header_timeout_s:g}; slot freed")
        if first is None:
            return
        if first.WhichOneof("msg") != "header":
            release()
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                             "header: the first message of a stream must be a SessionHeader (StreamRequest.header)")
        try:
            session = Session(svc, first.header)
        except InputError as exc:
            release()
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        log.info("session open", extra={"session": session.id, "robot": session.robot_id, "peer": context.peer(),
                                        "mode": session.plan.config.mode.value})
        status: tuple[grpc.StatusCode, str] | None = None
        try:
            yield pb.StreamResponse(accepted=pb.SessionAccepted(session_id=session.id, policy=svc.describe()))
            while True:
                try:
                    req = await self._next(it, stop_on_shutdown=True, timeout=cfg.idle_timeout_s)
                except ShuttingDown:
                    status = (grpc.StatusCode.UNAVAILABLE, "policy server is shutting down; reconnect to another replica")
                    break
                except IdleTimeout:
                    status = (grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"observation: none for idle_timeout_s={cfg.idle_timeout_s:g}; stream closed, slot freed")
                    break
                if req is None:
                    break
                if req.WhichOneof("msg") != "observation":
                    status = (grpc.StatusCode.INVALID_ARGUMENT, "header: a stream has exactly one SessionHeader, first")
                    break
                try:
                    reply = await session.on_observation(req.observation)
                except InputError as exc:
                    status = (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    break
                except Exception as exc:  # an engine failure ends this stream only
                    log.exception("session failed", extra={"session": session.id})
                    status = (grpc.StatusCode.INTERNAL, f"inference failed: {exc}")
                    break
                yield pb.StreamResponse(action=reply)
        finally:
            await session.close()
            release()
            log.info("session closed", extra=session.summary())
        if status is not None:
            await self._fail(context, *status)

    async def _next(self, it, stop_on_shutdown: bool = False, timeout: float | None = None):
        """The next request, None at end of stream; ShuttingDown if the server starts shutting down
        first, IdleTimeout if nothing arrives within ``timeout`` seconds."""
        nxt = asyncio.ensure_future(it.__anext__())
        nxt.add_done_callback(_consume)  # the RPC may be cancelled while we wait: never leave it unretrieved
        if stop_on_shutdown or timeout:
            stop = asyncio.ensure_future(self.shutdown_event.wait())
            try:
                done, _ = await asyncio.wait({nxt, stop}, timeout=timeout or None, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if nxt not in done:
                nxt.cancel()
                raise ShuttingDown() if stop in done else IdleTimeout()
        try:
            return await nxt
        except StopAsyncIteration:
            return None

    # ------------------------------------------------------------------ unary
    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        await self._check_ready(context)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.service.pool, self.service.infer, request)
        except InputError as exc:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.exception("infer failed")
            await self._fail(context, grpc.StatusCode.INTERNAL, f"inference failed: {exc}")
        raise AssertionError("unreachable")

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> pb.DescribeResponse:
        await self._check_ready(context)
        return self.service.describe()


def keepalive_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """Accept the agents' idle pings (every 10 s, also without calls) instead of answering
    GOAWAY too_many_pings after grpc's default 5-minute minimum; ping idle clients ourselves so
    dead peers free their streams."""
    return [("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(config.min_client_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_time_ms", int(config.server_keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            # BDP probing grows a stream's flow-control window with the link: a client that writes
            # faster than its session is served then parks its backlog in server memory (16 robots
            # over capacity: 2.6 GB RSS). Off: the 64 KB default window bounds it (0.5 GB), at the
            # cost of throughput on links with a long round trip (docs/security.md).
            ("grpc.http2.bdp_probe", 1 if config.bdp_probe else 0)]


class PolicyServer:
    """Owns the grpc.aio server, the health status and the service's lifecycle."""

    def __init__(self, routes: RoutingTable, config: ServiceConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0, metrics_port: int | None = None, engine_wrapper: EngineWrapper | None = None,
                 policy_factory: PolicyFactory | None = None, security: ServerSecurity | None = None) -> None:
        self.config = config or ServiceConfig()
        self.security = security or ServerSecurity()
        self.metrics = Metrics()
        self.service = PolicyService(routes, self.config, self.metrics, engine_wrapper, policy_factory)
        self.host, self.port = host, port
        self.metrics_port = metrics_port
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._servicer: PolicyServicer | None = None
        self._stopped = asyncio.Event()

    async def start(self, load: bool = True) -> int:
        """Binds the port (health NOT_SERVING), then loads and warms up (health SERVING). Returns the port."""
        opts = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.so_reuseport", 0), *keepalive_options(self.config)]
        count = lambda code: self.metrics.errors.labels(code.name).inc()  # noqa: E731
        interceptors = [*self.security.interceptors(count), DecodeGuardInterceptor(count)]  # auth first
        self._server = grpc.aio.server(options=opts, interceptors=interceptors)
        self._servicer = PolicyServicer(self.service)
        pb_grpc.add_PolicyServiceServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for warning in self.security.startup_warnings(self.host):
            log.warning(warning)
        creds = self.security.credentials()
        addr = f"{self.host}:{self.port}"
        self.port = self._server.add_secure_port(addr, creds) if creds else self._server.add_insecure_port(addr)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.host}:{self.port}")
        await self._server.start()
        if self.metrics_port is not None:  # on the service's own host: --host 127.0.0.1 keeps metrics local too
            self.metrics_port = self.metrics.serve_http(self.metrics_port, addr=self.host)
        log.info("listening", extra={"host": self.host, "port": self.port, "metrics_port": self.metrics_port})
        if load:
            await self.load()
        return self.port

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.service.load)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: NOT_SERVING, end every stream with UNAVAILABLE, let unary calls finish within ``grace``."""
        if self._server is None:
            return
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._servicer is not None:
            self._servicer.shutdown_event.set()
            for _ in range(int(grace * 100)):
                if self._servicer.open_streams == 0:
                    break
                await asyncio.sleep(0.01)
        await self._server.stop(grace)
        self.metrics.stop_http()
        self.service.close()
        self._server = None
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()
