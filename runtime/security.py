"""Who may talk to the policy service, and what a request must look like before any handler runs.

The service commands motors, so the policy methods are never open by accident:

- TLS (``--tls-cert/--tls-key``), mutual TLS when ``--tls-client-ca`` is given (the server then
  requires and verifies a client certificate);
- bearer tokens (``--auth-token-file``: one per line, several allowed for rotation), compared in
  constant time by a ``grpc.aio`` server interceptor BEFORE the handler is even looked at. Only
  ``grpc.health.v1.Health`` stays open (load balancer / kubelet probes carry no token);
- a decode guard: every request is deserialised here, not in grpc's core, so a byte string that is
  not the method's protobuf message is INVALID_ARGUMENT naming the message (not UNKNOWN), counted
  in ``xvla_errors_total``, and never echoed back.

A server on a non-loopback address that has neither TLS nor tokens is open to its whole network:
:func:`startup_warnings` says so at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from xvla.core.auth import load_tokens, token_from_header, token_ok  # noqa: F401 (re-exported)
from xvla.core.net import is_loopback

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes carry no credentials

ErrorCounter = Callable[[grpc.StatusCode], None]


@dataclass
class ServerSecurity:
    """The server's TLS material (PEM paths) and accepted bearer tokens. Empty: plaintext, open."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # given: mutual TLS, a client certificate signed by it is required
    tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    @classmethod
    def from_files(cls, tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                   tls_client_ca: str | Path | None = None, auth_token_file: str | Path | None = None) -> "ServerSecurity":
        return cls(Path(tls_cert) if tls_cert else None, Path(tls_key) if tls_key else None,
                   Path(tls_client_ca) if tls_client_ca else None,
                   load_tokens(auth_token_file) if auth_token_file else ())

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials (read once: rotating a certificate means restarting the server), or None."""
        if not self.tls:
            return None
        def read(p: Path, what: str) -> bytes:
            try:
                return p.read_bytes()
            except OSError as exc:
                raise ValueError(f"{what}: cannot read {p}: {exc.strerror}") from None
        ca = read(self.tls_client_ca, "--tls-client-ca") if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(read(self.tls_key, "--tls-key"), read(self.tls_cert, "--tls-cert"))],
                                           root_certificates=ca, require_client_auth=ca is not None)

    def startup_warnings(self, host: str) -> list[str]:
        if is_loopback(host) or self.tls or self.tokens:
            return []
        return [f"serving PLAINTEXT without authentication on {host}: anyone who reaches this port can command "
                "the robots; give --auth-token-file and --tls-cert/--tls-key (or bind --host 127.0.0.1)"]

    def interceptors(self, count_error: ErrorCounter | None = None) -> list[grpc.aio.ServerInterceptor]:
        out: list[grpc.aio.ServerInterceptor] = []
        if self.tokens:
            out.append(TokenAuthInterceptor(self.tokens, count_error))
        return out


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return token_from_header(value)
    return None


def _deny_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers ``code`` without reading (or deserialising) the request."""

    async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_unary)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny_unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_unary)
    return grpc.unary_unary_rpc_method_handler(deny_unary)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """``authorization: Bearer <token>`` required on every method except the health service."""

    def __init__(self, tokens: tuple[str, ...], count_error: ErrorCounter | None = None) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self.tokens = tuple(tokens)
        self.count_error = count_error

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        presented = _bearer(details.invocation_metadata)
        if token_ok(presented, self.tokens):
            return await continuation(details)
        handler = await continuation(details)  # only to learn the method's shape; its code never runs
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        if self.count_error is not None:
            self.count_error(grpc.StatusCode.UNAUTHENTICATED)
        why = "missing 'authorization: Bearer <token>' metadata" if presented is None else "token not accepted"
        log.warning("unauthenticated call refused", extra={"method": method, "reason": why})
        return _deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, f"authorization: {why}")


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Requests are parsed here: a payload that is not the method's message is INVALID_ARGUMENT.

    grpc's own deserialisation failure surfaces as UNKNOWN/INTERNAL with no field and is not
    counted; here it names the message type and its size only (the bytes are never echoed).
    """

    def __init__(self, count_error: ErrorCounter | None = None, prefixes: tuple[str, ...] = ("/xvla.",)) -> None:
        self.count_error = count_error
        self.prefixes = prefixes

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not (details.method or "").startswith(self.prefixes) or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        name = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        what = name.full_name if name is not None else "request"
        guard = self

        async def parsed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return parse(raw)
            except Exception:
                if guard.count_error is not None:
                    guard.count_error(grpc.StatusCode.INVALID_ARGUMENT)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"request: not a valid {what} message ({len(raw)} bytes)")

        def parsed_stream(raw_iter: AsyncIterator[bytes], failed: list[int]) -> AsyncIterator[Any]:
            """Parsed requests; an undecodable one ends the iteration (the handler sees end of stream and
            cleans up), and the wrapper then answers INVALID_ARGUMENT from the handler's own task."""
            async def gen():
                async for raw in raw_iter:
                    try:
                        msg = parse(raw)
                    except Exception:
                        failed.append(len(raw))
                        return
                    yield msg
            return gen()

        async def refuse(failed: list[int], context: grpc.aio.ServicerContext) -> None:
            if guard.count_error is not None:
                guard.count_error(grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request: not a valid {what} message ({failed[0]} bytes)")

        ser = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            inner_ss = handler.stream_stream

            async def stream_stream(it, ctx):
                failed: list[int] = []
                gen = inner_ss(parsed_stream(it, failed), ctx)
                try:
                    async for r in gen:
                        yield r
                finally:
                    await gen.aclose()
                if failed:
                    await refuse(failed, ctx)
            return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=ser)
        if handler.request_streaming:
            inner_su = handler.stream_unary

            async def stream_unary(it, ctx):
                failed: list[int] = []
                out = await inner_su(parsed_stream(it, failed), ctx)
                if failed:
                    await refuse(failed, ctx)
                return out
            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=ser)
        if handler.response_streaming:
            inner_us = handler.unary_stream

            async def unary_stream(raw: bytes, ctx):
                req = await parsed(raw, ctx)
                async for r in inner_us(req, ctx):
                    yield r
            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=ser)
        inner_uu = handler.unary_unary

        async def unary_unary(raw: bytes, ctx):
            return await inner_uu(await parsed(raw, ctx), ctx)
        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=ser)
