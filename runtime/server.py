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
from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc
from xvla.runtime.metrics import Metrics
from xvla.runtime.service import EngineWrapper, PolicyFactory, PolicyService, ServiceConfig
from xvla.runtime.session import Session
from xvla.runtime.skills import RoutingTable

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name  # xvla.policy.v1.PolicyService


class ShuttingDown(Exception):
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
        await context.abort(code, message)

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
        if svc.sessions >= svc.config.max_sessions:
            await self._fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"session limit reached ({svc.config.max_sessions} open sessions)")
        it = request_iterator.__aiter__()
        first = await self._next(it)
        if first is None:
            return
        if first.WhichOneof("msg") != "header":
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                             "header: the first message of a stream must be a SessionHeader (StreamRequest.header)")
        try:
            session = Session(svc, first.header)
        except InputError as exc:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        svc.sessions += 1
        self.open_streams += 1
        svc.metrics.sessions.set(svc.sessions)
        log.info("session open", extra={"session": session.id, "robot": session.robot_id, "peer": context.peer(),
                                        "mode": session.plan.config.mode.value})
        status: tuple[grpc.StatusCode, str] | None = None
        try:
            yield pb.StreamResponse(accepted=pb.SessionAccepted(session_id=session.id, policy=svc.describe()))
            while True:
                try:
                    req = await self._next(it, stop_on_shutdown=True)
                except ShuttingDown:
                    status = (grpc.StatusCode.UNAVAILABLE, "policy server is shutting down; reconnect to another replica")
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
            svc.sessions -= 1
            self.open_streams -= 1
            svc.metrics.sessions.set(svc.sessions)
            log.info("session closed", extra=session.summary())
        if status is not None:
            await self._fail(context, *status)

    async def _next(self, it, stop_on_shutdown: bool = False):
        """The next request, None at end of stream; ShuttingDown if the server starts shutting down first."""
        nxt = asyncio.ensure_future(it.__anext__())
        nxt.add_done_callback(_consume)  # the RPC may be cancelled while we wait: never leave it unretrieved
        if stop_on_shutdown:
            stop = asyncio.ensure_future(self.shutdown_event.wait())
            try:
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if nxt not in done:
                nxt.cancel()
                raise ShuttingDown()
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


class PolicyServer:
    """Owns the grpc.aio server, the health status and the service's lifecycle."""

    def __init__(self, routes: RoutingTable, config: ServiceConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0, metrics_port: int | None = None, engine_wrapper: EngineWrapper | None = None,
                 policy_factory: PolicyFactory | None = None) -> None:
        self.config = config or ServiceConfig()
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
                ("grpc.so_reuseport", 0)]
        self._server = grpc.aio.server(options=opts)
        self._servicer = PolicyServicer(self.service)
        pb_grpc.add_PolicyServiceServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.host}:{self.port}")
        await self._server.start()
        if self.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(self.metrics_port)
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
