"""Clients of the peer protocols (and of our gRPC Infer), one request = one observation -> one chunk.

Every client returns the same record: the chunk, the round trip, the server's reported
computation time and the payload bytes each way (application payload: HTTP headers,
HTTP/2 and ZeroMQ framing are not counted, for any protocol).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from xvla.benchmarks.observations import CAMERAS, BenchObservation
from xvla.benchmarks.peers import codecs
from xvla.benchmarks.peers.server import LEROBOT_SERVICE
from xvla.core.embodiments.r1pro import R1PRO_DOMAIN_ID


@dataclass
class Reply:
    chunk: np.ndarray
    rtt_ms: float
    server_ms: float
    request_bytes: int
    response_bytes: int
    rpcs: int = 1  # calls the client made for this one chunk

    @property
    def overhead_ms(self) -> float:
        return self.rtt_ms - self.server_ms


class HttpJsonClient:
    """X-VLA reference style: POST /act with json_numpy arrays; keep-alive connection."""

    protocol = "HTTP/1.1 + JSON (base64 arrays)"

    def __init__(self, port: int, steps: int = 10) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.steps = steps

    def encode(self, obs: BenchObservation) -> bytes:
        body: dict[str, Any] = {f"image{i}": obs.images[c] for i, c in enumerate(CAMERAS)}
        body.update(proprio=obs.proprio, language_instruction=obs.instruction, domain_id=R1PRO_DOMAIN_ID,
                    steps=self.steps)
        return codecs.json_dumps(body)

    def request(self, obs: BenchObservation) -> Reply:
        t0 = time.perf_counter()
        body = self.encode(obs)
        self.conn.request("POST", "/act", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"http /act: {resp.status} {data[:200]!r}")
        chunk = np.asarray(codecs.json_loads(data)["action"], np.float32)
        rtt = (time.perf_counter() - t0) * 1000.0
        return Reply(chunk, rtt, float(resp.getheader("X-Server-Ms", "nan")), len(body), len(data))

    def close(self) -> None:
        self.conn.close()


class LeRobotClient:
    """LeRobot style: pickled observation streamed in 2 MB pieces, then GetActions polled until non-empty."""

    protocol = "gRPC + pickle, polled actions"

    def __init__(self, port: int) -> None:
        import grpc

        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.send = self.channel.stream_unary(f"/{LEROBOT_SERVICE}/SendObservations")
        self.get = self.channel.unary_unary(f"/{LEROBOT_SERVICE}/GetActions")

    def encode(self, obs: BenchObservation) -> bytes:
        o = {f"observation.images.{c}": obs.images[c] for c in CAMERAS}
        o.update({"observation.state": obs.proprio, "task": obs.instruction})
        return codecs.pickle_dumps({"observation": o, "timestep": obs.frame, "timestamp": time.time(), "must_go": True})

    def request(self, obs: BenchObservation) -> Reply:
        t0 = time.perf_counter()
        payload = self.encode(obs)
        self.send(iter(codecs.pieces(payload)), timeout=120)
        polls = 0
        while True:
            polls += 1
            data = self.get(b"", timeout=120)
            if data:
                break
        out = codecs.pickle_loads(data)
        chunk = np.stack([a["action"] for a in out["actions"]]).astype(np.float32)
        rtt = (time.perf_counter() - t0) * 1000.0
        return Reply(chunk, rtt, float(out["server_ms"]), len(payload), len(data), 1 + polls)  # send + polls

    def close(self) -> None:
        self.channel.close()


class ZmqClient:
    """GR00T style: ZeroMQ REQ/REP with msgpack and .npy arrays."""

    protocol = "ZeroMQ REQ/REP + msgpack (npy arrays)"

    def __init__(self, port: int) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def encode(self, obs: BenchObservation) -> bytes:
        data: dict[str, Any] = {f"video.{c}": obs.images[c] for c in CAMERAS}
        data.update({"state": obs.proprio, "annotation.task": obs.instruction})
        return codecs.msgpack_dumps({"endpoint": "get_action", "data": data})

    def request(self, obs: BenchObservation) -> Reply:
        t0 = time.perf_counter()
        payload = self.encode(obs)
        self.sock.send(payload)
        data = self.sock.recv()
        out = codecs.msgpack_loads(data)
        rtt = (time.perf_counter() - t0) * 1000.0
        return Reply(np.asarray(out["action"], np.float32), rtt, float(out["server_ms"]), len(payload), len(data))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class OursInferClient:
    """Our gRPC ``Infer``: protobuf, images as raw RGB8 bytes, proprio as a typed tensor."""

    protocol = "gRPC + protobuf (raw tensors), Infer"

    def __init__(self, target: str, steps: int = 0, task_id: int = -1) -> None:
        import grpc

        from xvla.proto import policy_pb2 as pb
        from xvla.proto import policy_pb2_grpc as pb_grpc

        self.pb = pb
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.insecure_channel(target, options=opts)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        self.header = pb.SessionHeader(robot_id="bench", task_id=task_id, domain_id=R1PRO_DOMAIN_ID,
                                       control_rate_hz=30.0, execution=pb.ExecutionSettings(denoising_steps=steps))

    def encode(self, obs: BenchObservation) -> Any:
        from xvla.core.tensors import encode_image_raw, numpy_to_tensor

        pb = self.pb
        o = pb.Observation(frame_index=obs.frame, timestamp=time.monotonic(), instruction=obs.instruction)
        for c in CAMERAS:
            o.cameras.add(name=c, image=encode_image_raw(obs.images[c]))
        o.proprio.CopyFrom(numpy_to_tensor(obs.proprio))
        return pb.InferRequest(session=self.header, observation=o)

    def request(self, obs: BenchObservation) -> Reply:
        from xvla.core.tensors import tensor_to_numpy

        t0 = time.perf_counter()
        req = self.encode(obs)
        resp = self.stub.Infer(req, timeout=120)
        chunk = tensor_to_numpy(resp.actions, "actions")
        rtt = (time.perf_counter() - t0) * 1000.0
        return Reply(np.asarray(chunk, np.float32), rtt, float(resp.timings.total_ms), req.ByteSize(), resp.ByteSize())

    def close(self) -> None:
        self.channel.close()
