"""``xvla-agent``: drive the simulated R1Pro against a policy service, or run a protocol bridge.

    xvla-agent run --target HOST:PORT [--target HOST2:PORT] [--seconds N] [--json]
    xvla-agent bridge openpi|zmq|http --target HOST:PORT --port N
    xvla-agent describe --target HOST:PORT

The bearer token is read from ``--token`` or, better (it stays out of ``ps``), from the
``XVLA_TOKEN`` environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from google.protobuf import json_format

from xvla.agents.backoff import BackoffConfig
from xvla.agents.client import ClientConfig, PolicyClient, TlsConfig
from xvla.core.embodiments.r1pro import R1PRO_DOMAIN_ID
from xvla.proto import policy_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50051"  # xvla-serve's default bind

MODES = {
    "default": pb.EXECUTION_MODE_UNSPECIFIED,
    "ensemble": pb.TEMPORAL_ENSEMBLE,
    "receding": pb.RECEDING_HORIZON,
    "rtc": pb.RTC,
}


def _add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("policy service")
    g.add_argument("--target", action="append", default=None, metavar="HOST:PORT",
                   help=f"policy service address; repeat for failover targets (tried in order; default "
                        f"{DEFAULT_TARGET}, where xvla-serve listens with no flags)")
    g.add_argument("--token", default=os.environ.get("XVLA_TOKEN"), help="bearer token (default: $XVLA_TOKEN)")
    g.add_argument("--tls-ca", help="PEM root certificates: enables TLS")
    g.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    g.add_argument("--tls-key", help="PEM client private key (mutual TLS)")
    g.add_argument("--tls-server-name", help="expected server name when it differs from the host")
    g.add_argument("--connect-timeout", type=float, default=2.0, help="seconds per target to connect (default 2)")
    g.add_argument("--rpc-timeout", type=float, default=10.0, help="deadline of Describe/Infer (default 10 s)")
    g.add_argument("--reply-timeout", type=float, default=2.0,
                   help="an observation unanswered this long means the stream is dead (default 2 s)")
    g.add_argument("--keepalive", type=float, default=10.0, help="HTTP/2 keepalive ping interval (default 10 s)")
    g.add_argument("--max-in-flight", type=int, default=2,
                   help="observations sent and not yet answered, at most; a slower server gets the newest (default 2)")
    g.add_argument("--max-message-mb", type=float, default=32.0, help="gRPC message size limit (default 32 MB)")
    g.add_argument("--backoff-max", type=float, default=2.0, help="longest reconnect delay (default 2 s)")


def client_config(a: argparse.Namespace) -> ClientConfig:
    tls = None
    if a.tls_ca or a.tls_cert or a.tls_server_name:
        tls = TlsConfig(a.tls_ca, a.tls_cert, a.tls_key, a.tls_server_name)
    return ClientConfig(
        targets=a.target or [DEFAULT_TARGET],
        token=a.token,
        tls=tls,
        connect_timeout_s=a.connect_timeout,
        rpc_timeout_s=a.rpc_timeout,
        reply_timeout_s=a.reply_timeout,
        keepalive_time_s=a.keepalive,
        max_in_flight=a.max_in_flight,
        max_message_bytes=int(a.max_message_mb * 1024 * 1024),
        backoff=BackoffConfig(max_s=max(a.backoff_max, 0.05)),
    )


def _execution(a: argparse.Namespace) -> pb.ExecutionSettings:
    return pb.ExecutionSettings(mode=MODES[a.mode], denoising_steps=a.steps)


def cmd_run(a: argparse.Namespace) -> int:
    from xvla.agents.control_loop import ControlLoop, LoopConfig, default_header
    from xvla.agents.sim_r1pro import SimR1Pro

    header = default_header(a.rate, instruction=a.instruction, task_id=a.task_id)
    header.execution.CopyFrom(_execution(a))
    if a.max_new_tokens:
        header.max_new_tokens = a.max_new_tokens  # policies that generate text (DexVLA's reasoning)
    loop_cfg = LoopConfig(rate_hz=a.rate, reply_deadline_s=a.reply_deadline, hold_timeout_s=a.hold_timeout,
                          frames=a.frames)
    with PolicyClient(client_config(a)) as client:
        if a.task_id < 0:  # a policy with task prompts (BEHAVIOR v20) needs one: take its first, say so
            try:
                tasks = list(client.describe(timeout=a.connect_timeout + 1.0).tasks)
            except Exception:  # noqa: BLE001 - no service yet: the loop reports and backs off itself
                tasks = []
            if tasks:
                header.task_id = tasks[0].id
                print(f"xvla-agent: task {tasks[0].id} ({tasks[0].name}), the first of the policy's {len(tasks)} tasks "
                      "(--task-id chooses)", file=sys.stderr)
        loop = ControlLoop(SimR1Pro(), client, header, loop_cfg)
        signal.signal(signal.SIGINT, lambda *_: loop.stop())
        signal.signal(signal.SIGTERM, lambda *_: loop.stop())
        stats = loop.run(seconds=a.seconds)
    if a.json:
        print(stats.to_json())
    else:
        print(stats.format())
    return 0 if stats.ticks > 0 else 1


def cmd_describe(a: argparse.Namespace) -> int:
    with PolicyClient(client_config(a)) as client:
        d = client.describe()
    print(json_format.MessageToJson(d, preserving_proto_field_name=True))
    return 0


def cmd_bridge(a: argparse.Namespace) -> int:
    from xvla.agents.bridges.core import BridgeConfig, ListenerSecurity

    cfg = BridgeConfig(
        host=a.host,
        port=a.port,
        max_message_bytes=int(a.max_request_mb * 1024 * 1024),
        reply_timeout_s=a.bridge_reply_timeout,
        robot_id=f"{a.protocol}-bridge",
        domain_id=a.domain_id,
        instruction=a.instruction,
        execution=_execution(a),
        security=ListenerSecurity.from_files(a.listen_tls_cert, a.listen_tls_key, a.listen_tls_client_ca,
                                             a.listen_token_file),
    )
    cc = client_config(a)
    if a.protocol == "behavior":
        from xvla.agents.bridges.behavior import BehaviorBridge, BehaviorOptions, load_task_routes, load_task_table

        cfg.task_routes = load_task_routes(a.task_routes)
        bridge = BehaviorBridge(cc, cfg, BehaviorOptions(num_envs=a.num_envs, task_table=load_task_table(a.task_table),
                                                         state_order=a.state_order))
    elif a.protocol == "openpi":
        from xvla.agents.bridges.openpi_ws import OpenpiBridge

        bridge = OpenpiBridge(cc, cfg)
    elif a.protocol == "zmq":
        from xvla.agents.bridges.zmq_bridge import CurveConfig, ZmqBridge

        curve = CurveConfig(Path(a.zmq_curve_secret), Path(a.zmq_curve_clients) if a.zmq_curve_clients else None) \
            if a.zmq_curve_secret else None
        if curve is None and a.zmq_curve_clients:
            raise ValueError("--zmq-curve-clients needs --zmq-curve-secret")
        bridge = ZmqBridge(cc, cfg, api_token=a.api_token, curve=curve)
    else:
        from xvla.agents.bridges.http_act import HttpActBridge

        bridge = HttpActBridge(cc, cfg, bgr_jpeg=a.official_bgr_jpeg)

    async def main() -> None:
        task = asyncio.ensure_future(bridge.serve_forever())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xvla-agent", description="X-VLA robot-side agent and protocol bridges")
    ap.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="drive the simulated R1Pro against a policy service and print control statistics")
    _add_client_args(run)
    run.add_argument("--seconds", type=float, default=10.0, help="how long to run (default 10)")
    run.add_argument("--rate", type=float, default=30.0, help="control rate in Hz (default 30)")
    run.add_argument("--json", action="store_true", help="print the statistics as JSON")
    run.add_argument("--instruction", default="", help="task instruction")
    run.add_argument("--task-id", type=int, default=-1, help="task index of v20 checkpoints (-1: none)")
    run.add_argument("--max-new-tokens", type=int, default=0,
                     help="bound on the text a policy generates per chunk (DexVLA's reasoning; 0: the bundle's default)")
    run.add_argument("--mode", choices=sorted(MODES), default="default", help="chunk execution mode")
    run.add_argument("--steps", type=int, default=0, help="denoising steps (0: the bundle default)")
    run.add_argument("--hold-timeout", type=float, default=0.5, help="execute the held plan this long, then the safe action")
    run.add_argument("--reply-deadline", type=float, default=None, help="wait this long for a frame's answer (default 60%% of a tick)")
    run.add_argument("--frames", choices=["original", "bicubic", "numpy"], default="original",
                     help="send camera frames as captured (the server resizes by the bundle contract; default), "
                          "shrunk on the robot with the same pillow bicubic, or with the numpy box filter")
    run.set_defaults(func=cmd_run)

    desc = sub.add_parser("describe", help="print what the served policy expects and produces")
    _add_client_args(desc)
    desc.set_defaults(func=cmd_describe)

    br = sub.add_parser("bridge", help="serve a protocol other robot stacks speak, forwarding to the gRPC service")
    br.add_argument("protocol", choices=["behavior", "openpi", "zmq", "http"],
                    help="behavior: the BEHAVIOR-1K 2025/2026 evaluators (docs/behavior.md); openpi: plain openpi clients")
    _add_client_args(br)
    br.add_argument("--host", default="127.0.0.1",
                    help="listen address (default 127.0.0.1: loopback only; 0.0.0.0 to serve the network)")
    br.add_argument("--port", type=int, required=True, help="listen port")
    br.add_argument("--max-request-mb", type=float, default=64.0,
                    help="requests above this get an error reply (default 64 MB)")
    br.add_argument("--bridge-reply-timeout", type=float, default=10.0, help="per-request wait for the service (default 10 s)")
    br.add_argument("--domain-id", type=int, default=R1PRO_DOMAIN_ID, help=f"embodiment id (R1Pro: {R1PRO_DOMAIN_ID})")
    br.add_argument("--instruction", default="", help="task instruction for sessions")
    br.add_argument("--mode", choices=sorted(MODES), default="default", help="chunk execution mode")
    br.add_argument("--steps", type=int, default=0, help="denoising steps (0: the bundle default)")
    br.add_argument("--num-envs", type=int, default=1,
                    help="behavior: one endpoint per evaluator environment on ports PORT..PORT+N-1 (default 1)")
    br.add_argument("--task-table", default=None,
                    help="behavior: the evaluator's task list (2026: B100_task_misc.csv; default: the 2025 list for 256-d proprio)")
    br.add_argument("--task-routes", default=None, metavar="FILE",
                    help="behavior: task -> checkpoint map, JSON/YAML {task id or name: route of the service's "
                         "routes.yaml} (default: the service's own routing)")
    br.add_argument("--state-order", choices=["action_aligned", "b1k_baseline"], default="action_aligned",
                    help="behavior: order of the 23-d state cut from the raw proprio (default action_aligned)")
    br.add_argument("--official-bgr-jpeg", action="store_true",
                    help="http: decode JPEG/PNG bytes to BGR and feed them as RGB, as the official X-VLA server does "
                         "(default: correct RGB colours)")
    br.add_argument("--api-token", default=os.environ.get("XVLA_ZMQ_TOKEN"), help="zmq: require this api_token in requests")
    ls = br.add_argument_group("listener security (openpi, http: TLS + tokens; zmq: CURVE + api_token)")
    ls.add_argument("--listen-tls-cert", help="PEM certificate chain of the bridge's listener (wss:// / https://)")
    ls.add_argument("--listen-tls-key", help="PEM private key of the listener")
    ls.add_argument("--listen-tls-client-ca", help="PEM CA: require client certificates it signed (mutual TLS)")
    ls.add_argument("--listen-token-file", help="accepted tokens, one per line ('Authorization: Bearer|Api-Key <t>')")
    ls.add_argument("--zmq-curve-secret", help="zmq: the bridge's CURVE secret certificate (zmq.auth.create_certificates)")
    ls.add_argument("--zmq-curve-clients", help="zmq: folder of authorised client public certificates")
    br.set_defaults(func=cmd_bridge)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(a.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return a.func(a)
    except (ValueError, ConnectionError) as e:
        print(f"xvla-agent: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
