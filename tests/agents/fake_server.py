"""A small, deterministic stand-in for the policy service, for the agent's tests.

It speaks the real wire contract (``proto/policy.proto``), validates what
the agent sends the way the service does (names the offending field), and answers with
actions that are a known function of the frame index, so a test can tell exactly which
chunk row the robot executed. It can be slowed, stalled (stream open, no answers),
guarded by a token, and run in-process or as a process that a test kills with SIGKILL:

    python -m tests.agents.fake_server --port 0      # prints "READY <port>"

It is a *synchronous* gRPC server (threads): grpc.aio servers and clients on different
event loops of one process race each other (an early abort then surfaces as INTERNAL),
and the agent's clients are grpc.aio, so an in-process fake must not be.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np

from xvla.proto import policy_pb2 as pb
from xvla.proto import policy_pb2_grpc as pb_grpc

DIM = 23
HORIZON = 30
CAMERAS = (("head", 224, 224), ("left_wrist", 224, 224), ("right_wrist", 224, 224))


def fake_action(frame: int, dim: int = DIM) -> np.ndarray:
    """The action the fake policy plans for ``frame`` (any chunk covering it agrees)."""
    d = np.arange(dim, dtype=np.float64)
    return (0.1 * np.sin(0.05 * frame + 0.3 * d)).astype(np.float32)


def fake_chunk(start: int, horizon: int = HORIZON, dim: int = DIM) -> np.ndarray:
    return np.stack([fake_action(start + i, dim) for i in range(horizon)])


def _tensor(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return pb.Tensor(dtype=pb.FLOAT32, shape=list(a.shape), data=a.tobytes())


def _untensor(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype=np.float32).reshape(tuple(t.shape))


@dataclass
class FakeBehaviour:
    delay_s: float = 0.0  # added before every reply
    stall: bool = False  # stop answering (keep the stream open)
    hold: bool = False  # answer every observation with ActionSource.HOLD
    token: str | None = None  # require "authorization: Bearer <token>"
    chunk_every: int = 10  # a new chunk every N observations of a session
    needs_pose: bool = False
    cameras: tuple = CAMERAS
    accepted_proprio_dims: tuple = (DIM, 256)
    tasks: tuple = ((0, "turning_on_radio"), (1, "picking_up_trash"))  # () = no task prompts


@dataclass
class FakeRecord:
    headers: list = field(default_factory=list)
    observations: list = field(default_factory=list)  # (session_id, frame, {camera: (h, w, enc, nbytes)}, proprio_dim, has_pose)
    infer_requests: list = field(default_factory=list)
    sessions_closed: int = 0
    replies_sent: int = 0
    max_unanswered: int = 0  # the most observations received and not yet answered, at any receive


class FakePolicyService(pb_grpc.PolicyServiceServicer):
    def __init__(self, behaviour: FakeBehaviour | None = None) -> None:
        self.behaviour = behaviour or FakeBehaviour()
        self.record = FakeRecord()

    def describe(self) -> pb.DescribeResponse:
        b = self.behaviour
        return pb.DescribeResponse(
            policy_kind="xvla",
            model_name="fake",
            action_space=pb.ActionSpaceSpec(
                mode="r1pro",
                dim=DIM,
                gripper_dims=[14, 22],
                accepted_proprio_dims=list(b.accepted_proprio_dims),
            ),
            horizon=HORIZON,
            cameras=[pb.CameraSpec(name=n, height=h, width=w, needs_pose=b.needs_pose) for n, h, w in b.cameras],
            control_rate_hz=30.0,
            tasks=[pb.Task(id=i, name=n) for i, n in b.tasks],
            max_message_bytes=16 * 1024 * 1024,
        )

    def _auth(self, context: grpc.ServicerContext) -> None:
        if self.behaviour.token is None:
            return
        md = dict(context.invocation_metadata() or ())
        if md.get("authorization") != f"Bearer {self.behaviour.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token")

    def _problem(self, obs: pb.Observation) -> tuple[str, dict]:
        names = {c[0] for c in self.behaviour.cameras}
        cams = {}
        for i, cf in enumerate(obs.cameras):
            if cf.name not in names:
                return f"observation.cameras[{i}].name: unknown camera {cf.name!r}", {}
            img = cf.image
            if img.encoding == pb.RAW_RGB8 and len(img.data) != img.height * img.width * 3:
                return f"observation.cameras[{i}].image.data: size does not match {img.height}x{img.width}x3", {}
            cams[cf.name] = (img.height, img.width, img.encoding, len(img.data), cf.HasField("extrinsics") and cf.HasField("intrinsics"))
        pdim = int(np.prod(obs.proprio.shape)) if obs.proprio.shape else 0
        if pdim not in self.behaviour.accepted_proprio_dims:
            return f"observation.proprio: {pdim} values, expected one of {list(self.behaviour.accepted_proprio_dims)}", {}
        return "", {"cameras": cams, "proprio_dim": pdim}

    def Describe(self, request, context):
        self._auth(context)
        return self.describe()

    def Infer(self, request: pb.InferRequest, context):
        self._auth(context)
        problem, info = self._problem(request.observation)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.record.infer_requests.append((request, info))
        if self.behaviour.delay_s:
            time.sleep(self.behaviour.delay_s)
        return pb.InferResponse(actions=_tensor(fake_chunk(int(request.observation.frame_index))), skill="fake", route="fake")

    def Stream(self, request_iterator, context):
        """Replies are delayed by ``delay_s`` each (latency, not throughput: like a pipelined server)."""
        self._auth(context)
        out: queue.Queue = queue.Queue()
        received, answered = [0], [0]  # this stream's observations in, action replies out

        def reader() -> None:
            session_id, last_frame, chunk_start, n = "", -1, None, 0
            try:
                for req in request_iterator:
                    if req.HasField("header"):
                        if session_id:
                            return out.put(("abort", "header: sent twice"))
                        session_id = req.header.session_id or uuid.uuid4().hex[:12]
                        self.record.headers.append(req.header)
                        accepted = pb.SessionAccepted(session_id=session_id, policy=self.describe())
                        out.put((time.monotonic(), pb.StreamResponse(accepted=accepted)))
                        continue
                    if not session_id:
                        return out.put(("abort", "header: the first message must be a SessionHeader"))
                    obs = req.observation
                    frame = int(obs.frame_index)
                    if frame <= last_frame:
                        return out.put(("abort", f"observation.frame_index: {frame} does not increase (last {last_frame})"))
                    last_frame = frame
                    problem, info = self._problem(obs)
                    if problem:
                        return out.put(("abort", problem))
                    self.record.observations.append((session_id, frame, info["cameras"], info["proprio_dim"]))
                    received[0] += 1
                    self.record.max_unanswered = max(self.record.max_unanswered, received[0] - answered[0])
                    source = pb.HOLD if self.behaviour.hold else pb.QUEUE
                    reply = pb.ActionReply(frame_index=frame, action=_tensor(fake_action(frame)), source=source,
                                           skill="fake", route="fake")
                    if self.behaviour.hold:
                        pass  # like the service: a HOLD reply carries no plan
                    elif chunk_start is None or n % self.behaviour.chunk_every == 0 or frame - chunk_start >= HORIZON:
                        chunk_start = frame
                        # Like the service: the remaining plan, starting at the frame after this one.
                        reply.chunk.CopyFrom(_tensor(fake_chunk(frame + 1, HORIZON - 1)))
                    reply.queue_depth = 0 if chunk_start is None else max(0, HORIZON - 1 - (frame - chunk_start))
                    n += 1
                    out.put((time.monotonic() + self.behaviour.delay_s, pb.StreamResponse(action=reply)))
            except Exception:  # noqa: BLE001 - the client went away
                pass
            finally:
                out.put(None)

        threading.Thread(target=reader, daemon=True, name="fake-stream-reader").start()
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if item[0] == "abort":
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, item[1])
                due, resp = item
                while self.behaviour.stall and context.is_active():
                    time.sleep(0.01)
                if not context.is_active():
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if resp.HasField("action"):
                    answered[0] += 1
                    self.record.replies_sent += 1
                yield resp
        finally:
            self.record.sessions_closed += 1


class FakeServer:
    """The fake service in-process: ``with FakeServer() as s: s.target``."""

    def __init__(self, behaviour: FakeBehaviour | None = None, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> None:
        self.service = FakePolicyService(behaviour)
        self._port = port
        self._tls = tls  # (private key PEM, certificate chain PEM)
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def behaviour(self) -> FakeBehaviour:
        return self.service.behaviour

    @property
    def record(self) -> FakeRecord:
        return self.service.record

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="fake-policy"),
                                   options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        pb_grpc.add_PolicyServiceServicer_to_server(self.service, self._server)
        if self._tls:
            self.port = self._server.add_secure_port(f"127.0.0.1:{self._port}", grpc.ssl_server_credentials([self._tls]))
        else:
            self.port = self._server.add_insecure_port(f"127.0.0.1:{self._port}")
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop at once, cancelling open streams (the client sees the connection go)."""
        if self._server is not None:
            self.behaviour.stall = False
            self._server.stop(0).wait(10)
            self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--chunk-every", type=int, default=10)
    a = ap.parse_args(argv)
    srv = FakeServer(FakeBehaviour(delay_s=a.delay, chunk_every=a.chunk_every), port=a.port).start()
    print(f"READY {srv.port}", flush=True)
    try:
        srv._server.wait_for_termination()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
