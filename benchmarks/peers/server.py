"""Harness servers speaking the peer protocols in front of the runtime's Policy (one process each).

    python -m xvla.benchmarks.peers.server --style http|lerobot|zmq --bundle DIR --port N [--ready-file F]

Every server runs the same computation as ``xvla-serve``'s ``Infer``: ``Policy.act`` on the
decoded observation (preprocess, VLM, denoising loop, postprocess), and reports that
computation's wall time (``server_ms``) so the client can subtract it: what is left of the
round trip is the protocol's own cost (serialisation, transport, framework).
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable

import numpy as np

from xvla.benchmarks.peers import STYLES, codecs

CAMERAS = ("head", "left_wrist", "right_wrist")
LEROBOT_SERVICE = "xvla.bench.lerobot_style.AsyncInference"

log = logging.getLogger("xvla.benchmarks.peers")


class Model:
    """The shared computation: raw observation -> chunk [T, D], timed."""

    def __init__(self, bundle: Path, threads: int, providers: str = "cpu") -> None:
        from xvla.runtime import Policy

        self.policy = Policy.load(bundle, providers=[p for p in providers.split(",") if p], intra_op_threads=threads,
                                  seed=0)
        self.policy.warmup()
        self.lock = threading.Lock()

    def act(self, images: dict[str, np.ndarray], proprio: np.ndarray, instruction: str) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        with self.lock:
            chunk = self.policy.act({"images": images, "proprio": proprio, "instruction": instruction})
        return np.asarray(chunk, np.float32), (time.perf_counter() - t0) * 1000.0


# ----------------------------------------------------------------------------- X-VLA reference style


def serve_http(model: Model, port: int, ready: Callable[[], None]) -> None:
    import asyncio

    from aiohttp import web

    async def act(request: web.Request) -> web.Response:
        body = codecs.json_loads(await request.read())
        images = {name: body[f"image{i}"] for i, name in enumerate(CAMERAS)}
        loop = asyncio.get_running_loop()
        chunk, ms = await loop.run_in_executor(
            None, model.act, images, np.asarray(body["proprio"], np.float32), body["language_instruction"])
        return web.Response(body=codecs.json_dumps({"action": chunk.tolist()}), content_type="application/json",
                            headers={"X-Server-Ms": f"{ms:.4f}"})

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/act", act)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready()
        await asyncio.Event().wait()

    asyncio.run(main())


# ----------------------------------------------------------------------------- LeRobot style


def serve_lerobot(model: Model, port: int, ready: Callable[[], None], poll_timeout_s: float = 0.05) -> None:
    import grpc

    observations: "queue.Queue[dict]" = queue.Queue(maxsize=1)

    def send_observations(request_iterator, context) -> bytes:
        msgs = list(request_iterator)
        obs = codecs.pickle_loads(codecs.join_pieces(msgs))
        try:
            observations.get_nowait()  # the newest observation replaces an unprocessed one
        except queue.Empty:
            pass
        observations.put(obs)
        return b""

    def get_actions(request: bytes, context) -> bytes:
        try:
            obs = observations.get(timeout=poll_timeout_s)
        except queue.Empty:
            return b""  # nothing to do yet: the client polls again
        o = obs["observation"]
        images = {name: o[f"observation.images.{name}"] for name in CAMERAS}
        chunk, ms = model.act(images, o["observation.state"], o["task"])
        t, ts = int(obs["timestep"]), float(obs["timestamp"])
        actions = [{"timestep": t + i, "timestamp": ts + i / 30.0, "action": a} for i, a in enumerate(chunk)]
        return codecs.pickle_dumps({"actions": actions, "server_ms": ms})

    def ready_rpc(request: bytes, context) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(LEROBOT_SERVICE, {
        "Ready": grpc.unary_unary_rpc_method_handler(ready_rpc),
        "SendObservations": grpc.stream_unary_rpc_method_handler(send_observations),
        "GetActions": grpc.unary_unary_rpc_method_handler(get_actions),
    })
    opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.max_send_message_length", 64 * 1024 * 1024)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=opts)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready()
    server.wait_for_termination()


# ----------------------------------------------------------------------------- GR00T style


def serve_zmq(model: Model, port: int, ready: Callable[[], None]) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready()
    while True:
        req = codecs.msgpack_loads(sock.recv())
        endpoint = req.get("endpoint")
        if endpoint == "ping":
            sock.send(codecs.msgpack_dumps({"status": "ok"}))
            continue
        if endpoint != "get_action":
            sock.send(codecs.msgpack_dumps({"error": f"unknown endpoint {endpoint!r}"}))
            continue
        d = req["data"]
        images = {name: d[f"video.{name}"] for name in CAMERAS}
        chunk, ms = model.act(images, d["state"], d["annotation.task"])
        sock.send(codecs.msgpack_dumps({"action": chunk, "server_ms": ms}))


SERVE = {"http": serve_http, "lerobot": serve_lerobot, "zmq": serve_zmq}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xvla.benchmarks.peers.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style", choices=STYLES, required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--providers", default="cpu", help="runtime providers, as xvla-serve --providers")
    p.add_argument("--ready-file", type=Path, help="touched once the server accepts requests")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = Model(a.bundle, a.threads, a.providers)

    def ready() -> None:
        if a.ready_file:
            a.ready_file.write_text(str(a.port))

    SERVE[a.style](model, a.port, ready)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
