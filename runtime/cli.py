"""``xvla-serve``: the streaming gRPC policy service.

    xvla-serve --bundle artifacts/tiny --port 50051
    xvla-serve --routes routes.yaml --port 50051 --providers cuda --metrics-port 9090
    xvla-serve                       # no bundle: exports (once, cached in ./artifacts) and serves the tiny R1Pro v20 default

SIGTERM / SIGINT shut down gracefully: health NOT_SERVING, open streams end with UNAVAILABLE,
unary calls get --grace seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from xvla.runtime.execution import ExecutionConfig, ExecutionMode, SkillChange

log = logging.getLogger("xvla.runtime.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xvla-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", type=Path, help="bundle folder (xvla-export output)")
    src.add_argument("--routes", type=Path, help="routes.yaml: skill -> bundle routing table (docs/serving.md)")
    from xvla.runtime.artifacts import DEFAULT_PRESET

    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"with neither --bundle nor --routes: the seeded preset to export and serve "
                        f"(default {DEFAULT_PRESET}: the R1Pro BEHAVIOR-style default that xvla-agent run simulates)")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="cache folder for the exported default bundle")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default loopback only; 0.0.0.0 or an interface address to serve a network)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port, printed at start)")
    p.add_argument("--providers", default="cpu", help="comma list: cpu, cuda, tensorrt (onnxruntime), trt-native, "
                   "or torch-cuda[-bf16|-fp16|-fp32] / torch-cpu (PyTorch engines)")
    p.add_argument("--allow-fallback", action="store_true", help="accept a missing provider (else: startup error)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads per engine (0: default)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics HTTP port (off if not given)")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="max time a call waits for batch-mates")
    p.add_argument("--max-batch", type=int, default=None, help="rows per engine call (default: the bundle's max_batch)")
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--max-message-mb", type=float, default=16.0)
    p.add_argument("--header-timeout", type=float, default=10.0, help="s a new stream may take to send its header")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="s of silence after which a stream is closed")
    p.add_argument("--no-bdp-probe", action="store_true",
                   help="keep HTTP/2 windows at 64 KB: bounds what a fast writer can park in server memory (LAN only)")
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument("--tls-cert", type=Path, help="PEM server certificate chain: enables TLS")
    sec.add_argument("--tls-key", type=Path, help="PEM server private key")
    sec.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client certificates it signed (mTLS)")
    sec.add_argument("--auth-token-file", type=Path,
                     help="accepted bearer tokens, one per line: every policy call must carry one (health stays open)")
    p.add_argument("--control-rate", type=float, default=30.0, help="Hz, for sessions that do not say")
    p.add_argument("--mode", choices=[m.value for m in ExecutionMode], default="temporal_ensemble",
                   help="default execution mode for sessions that do not choose")
    p.add_argument("--ensemble-k", type=float, default=0.01, help="ACT weight exp(-k*i), i=0 the oldest chunk")
    p.add_argument("--replan-threshold", type=int, default=None, help="default: horizon // 2")
    p.add_argument("--on-skill-change", choices=[c.value for c in SkillChange], default="flush")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 checks of bundle files (faster start)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--grace", type=float, default=5.0, help="seconds for in-flight calls at shutdown")
    p.add_argument("--seed", type=int, default=None, help="noise seed (reproducible runs)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    return p


def make_server(args: argparse.Namespace):
    from xvla.runtime.engines import parse_providers
    from xvla.runtime.security import ServerSecurity
    from xvla.runtime.server import PolicyServer
    from xvla.runtime.service import ServiceConfig
    from xvla.runtime.skills import RoutingTable

    if args.routes:
        routes = RoutingTable.load(args.routes)
    else:
        bundle = args.bundle
        if bundle is None:
            from xvla.runtime.artifacts import ensure_bundle

            bundle = ensure_bundle(args.preset, args.artifacts)
            log.info("serving the default bundle", extra={"bundle": str(bundle)})
        routes = RoutingTable.single(bundle, name=Path(bundle).name or "default")
    execution = ExecutionConfig(mode=ExecutionMode(args.mode), ensemble_k=args.ensemble_k,
                                replan_threshold=args.replan_threshold, on_skill_change=SkillChange(args.on_skill_change))
    if routes.on_skill_change == "flush" and args.on_skill_change != "flush":
        routes.on_skill_change = args.on_skill_change
    cfg = ServiceConfig(providers=parse_providers(args.providers), allow_fallback=args.allow_fallback,
                        intra_op_threads=args.threads, batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                        max_sessions=args.max_sessions, max_message_bytes=int(args.max_message_mb * 1024 * 1024),
                        control_rate_hz=args.control_rate, execution=execution, warmup=not args.no_warmup,
                        verify_bundles=not args.no_verify, seed=args.seed,
                        header_timeout_s=args.header_timeout, idle_timeout_s=args.idle_timeout,
                        bdp_probe=not args.no_bdp_probe)
    security = ServerSecurity.from_files(args.tls_cert, args.tls_key, args.tls_client_ca, args.auth_token_file)
    for warning in security.startup_warnings(args.host):
        print(f"xvla-serve: WARNING: {warning}", file=sys.stderr, flush=True)
    return PolicyServer(routes, cfg, host=args.host, port=args.port, metrics_port=args.metrics_port,
                        security=security)


async def serve(args: argparse.Namespace) -> int:
    server = make_server(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - non-POSIX
            pass
    port = await server.start(load=False)
    print(f"xvla-serve: listening on {args.host}:{port} (loading engines...)", flush=True)
    try:
        await server.load()
    except BaseException:
        await server.stop(0)
        raise
    svc = server.service
    print(f"xvla-serve: SERVING on {args.host}:{port}; routes {sorted(svc.policies)}; "
          f"load {svc.load_ms:.0f} ms, warm-up {svc.warmup_ms:.0f} ms"
          + (f"; metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""), flush=True)
    await stop.wait()
    print("xvla-serve: shutting down", flush=True)
    await server.stop(args.grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    from xvla.runtime.logs import configure_logging
    from xvla.runtime.native_memory import bound_native_heap

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json_lines=args.log_format == "json")
    log.info(bound_native_heap())  # before any engine or worker thread allocates
    try:
        return asyncio.run(serve(args))
    except Exception as exc:  # startup errors (bundle, providers, routes): one clear line, non-zero exit
        log.debug("startup failed", exc_info=True)
        print(f"xvla-serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
