"""Seeded, bounded adversarial input for the gRPC service and the bridges (used by tests/fuzz and
``python -m xvla.benchmarks.fuzz``).

Every generator takes a ``numpy.random.Generator`` and the served policy's Describe, so the same seed
gives the same cases against any bundle. Cases are what an attacker or a broken client sends: random
bytes, valid messages with flipped/cut/inserted bytes, tensors whose dtype/shape/size disagree, huge
or negative dims, NaN/Inf, corrupt and size-forged (decompression bomb) JPEG/PNG, unknown enum
values, frame-index abuse and header misuse on streams; for the bridges: random/mutated msgpack
(also multipart over ZeroMQ), websocket text/binary frames, JSON bodies.

The runners return a :class:`FuzzReport`: per status code counts, hangs (no answer within the
deadline), errors whose details do not start with a field name, and the slowest case.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import grpc
import numpy as np

from xvla.proto import policy_pb2 as pb

INFER = "/xvla.policy.v1.PolicyService/Infer"
STREAM = "/xvla.policy.v1.PolicyService/Stream"
DESCRIBE = "/xvla.policy.v1.PolicyService/Describe"
FIELD_RE = re.compile(r"^[A-Za-z_][\w]*(\[\d+\])?([./][\w\[\]]+)*:")  # "observation.cameras[0].image.data: ..."
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
CLIENT_WRITE_RACE = "Internal error from Core"


@dataclass
class FuzzReport:
    name: str
    cases: int = 0
    messages: int = 0  # messages sent (a stream case carries several)
    codes: Counter = field(default_factory=Counter)
    hangs: int = 0
    unnamed: list[str] = field(default_factory=list)  # error details that name no field (first few kept)
    unnamed_count: int = 0
    bad_codes: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    seconds: float = 0.0

    def add(self, code: str, details: str = "", elapsed: float = 0.0, named_required: bool = True,
            acceptable: bool = True) -> None:
        self.cases += 1
        self.codes[code] += 1
        self.slowest_s = max(self.slowest_s, elapsed)
        if not acceptable:
            self.bad_codes.append(f"{code}: {details[:160]}")
        if named_required and code not in ("OK", "200") and not FIELD_RE.match(details or ""):
            self.unnamed_count += 1
            if len(self.unnamed) < 10:
                self.unnamed.append(f"{code}: {details[:160]}")

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "cases": self.cases, "messages": self.messages or self.cases, "codes": dict(self.codes), "hangs": self.hangs,
                "unacceptable_codes": len(self.bad_codes), "errors_without_field": self.unnamed_count,
                "slowest_case_s": round(self.slowest_s, 3), "seconds": round(self.seconds, 1),
                "examples": (self.bad_codes + self.unnamed)[:5]}


# ------------------------------------------------------------------------------ building blocks
def _jpeg(rng: np.random.Generator, h: int = 16, w: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png(rng: np.random.Generator, h: int = 16, w: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def forge_size(data: bytes, h: int, w: int) -> bytes:
    """The same JPEG/PNG with a forged declared size (what a decompression bomb looks like)."""
    b = bytearray(data)
    if data.startswith(b"\x89PNG"):
        b[16:24] = (w & 0xFFFFFFFF).to_bytes(4, "big") + (h & 0xFFFFFFFF).to_bytes(4, "big")
        return bytes(b)
    i = 2
    while i + 9 < len(b):
        marker, seg = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 9] = (h & 0xFFFF).to_bytes(2, "big") + (w & 0xFFFF).to_bytes(2, "big")
            break
        i += 2 + seg
    return bytes(b)


def mutate(data: bytes, rng: np.random.Generator, max_ops: int = 6) -> bytes:
    """1..max_ops byte-level edits: flip, set, delete span, insert random span, duplicate span, truncate."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, max_ops + 1))):
        op = int(rng.integers(0, 6))
        n = len(b)
        if n == 0:
            b += rng.bytes(int(rng.integers(1, 16)))
            continue
        i = int(rng.integers(0, n))
        if op == 0:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            b[i] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x12, 0x1A]))
        elif op == 2:
            del b[i:i + int(rng.integers(1, 32))]
        elif op == 3:
            b[i:i] = rng.bytes(int(rng.integers(1, 32)))
        elif op == 4:
            j = min(n, i + int(rng.integers(1, 64)))
            b[i:i] = b[i:j]
        else:
            del b[i:]
    return bytes(b)


def valid_observation(desc: pb.DescribeResponse, rng: np.random.Generator, frame: int = 0) -> pb.Observation:
    obs = pb.Observation(frame_index=frame)
    for cam in desc.cameras:
        h, w = cam.height or 8, cam.width or 8
        obs.cameras.add(name=cam.name, image=pb.Image(encoding=pb.RAW_RGB8, height=h, width=w,
                                                     data=rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()))
    d = desc.action_space.accepted_proprio_dims[0] if desc.action_space.accepted_proprio_dims else desc.action_space.dim
    obs.proprio.CopyFrom(pb.Tensor(dtype=pb.FLOAT32, shape=[d], data=np.zeros(d, np.float32).tobytes()))
    return obs


def valid_header(desc: pb.DescribeResponse) -> pb.SessionHeader:
    return pb.SessionHeader(task_id=int(desc.tasks[0].id) if desc.tasks else -1, robot_id="fuzz")


_SHAPES = [[], [0], [-1], [1 << 62], [1 << 31, 1 << 31], [1] * 65, [1] * 9, [3, -3], [1 << 24], [2, 2]]
_FLOATS = [np.nan, np.inf, -np.inf, 1e38, -0.0]


def bad_tensor(rng: np.random.Generator, d: int) -> pb.Tensor:
    kind = int(rng.integers(0, 5))
    dtype = int(rng.choice([pb.FLOAT32, pb.FLOAT64, pb.INT32, pb.UINT8, pb.BOOL, 0, 99, -5]))
    if kind == 0:  # shape disagreeing with data
        shape = _SHAPES[int(rng.integers(0, len(_SHAPES)))]
        return pb.Tensor(dtype=dtype, shape=shape, data=rng.bytes(int(rng.integers(0, 64))))
    if kind == 1:  # NaN / Inf
        a = np.zeros(d, np.float32)
        a[int(rng.integers(0, d))] = _FLOATS[int(rng.integers(0, len(_FLOATS)))]
        return pb.Tensor(dtype=pb.FLOAT32, shape=[d], data=a.tobytes())
    if kind == 2:  # size off by a few bytes
        return pb.Tensor(dtype=pb.FLOAT32, shape=[d], data=b"\0" * (4 * d + int(rng.integers(-3, 4)) or 1))
    if kind == 3:  # wrong dim
        n = int(rng.integers(0, 4 * d + 2))
        return pb.Tensor(dtype=pb.FLOAT32, shape=[n], data=b"\0" * (4 * n))
    return pb.Tensor(dtype=dtype, shape=[d, 1], data=b"\0" * (4 * d))


def bad_image(rng: np.random.Generator) -> pb.Image:
    kind = int(rng.integers(0, 8))
    if kind == 0:
        return pb.Image(encoding=pb.JPEG, data=forge_size(_jpeg(rng), int(rng.integers(5000, 65535)), int(rng.integers(5000, 65535))))
    if kind == 1:
        return pb.Image(encoding=pb.PNG, data=forge_size(_png(rng), int(rng.integers(1, 1 << 31)), int(rng.integers(1, 1 << 31))))
    if kind == 2:
        j = _jpeg(rng)
        return pb.Image(encoding=pb.JPEG, data=j[:int(rng.integers(2, len(j)))])
    if kind == 3:
        return pb.Image(encoding=pb.PNG, data=mutate(_png(rng), rng, 4))
    if kind == 4:
        return pb.Image(encoding=pb.JPEG, data=b"\xff\xd8\xff" + rng.bytes(int(rng.integers(0, 300))))
    if kind == 5:
        h, w = int(rng.integers(-2, 10_000)) & 0xFFFFFFFF, int(rng.integers(-2, 10_000)) & 0xFFFFFFFF
        return pb.Image(encoding=pb.RAW_RGB8, height=h, width=w, data=rng.bytes(int(rng.integers(0, 512))))
    if kind == 6:
        return pb.Image(encoding=int(rng.choice([7, 99, -1])), data=rng.bytes(16))
    return pb.Image(encoding=pb.JPEG, data=_jpeg(rng, 4, int(rng.integers(1, 9000))))  # real, very wide


def bad_header(rng: np.random.Generator, desc: pb.DescribeResponse) -> pb.SessionHeader:
    h = valid_header(desc)
    kind = int(rng.integers(0, 8))
    if kind == 0:
        h.task_id = int(rng.integers(-(1 << 31), 1 << 31))
    elif kind == 1:
        h.domain_id = int(rng.integers(-(1 << 31), 1 << 31))
    elif kind == 2:
        h.instruction = "x" * int(rng.choice([5000, 20_000, 200_000]))
    elif kind == 3:
        h.control_rate_hz = float(rng.choice([np.nan, np.inf, -1.0, 1e9]))
    elif kind == 4:
        h.execution.mode = int(rng.integers(3, 1000))
    elif kind == 5:
        h.execution.on_skill_change = int(rng.integers(3, 1000))
    elif kind == 6:
        h.skill, h.route = rng.bytes(8).hex() * int(rng.integers(1, 400)), "r" * int(rng.integers(0, 300))
    else:
        h.execution.denoising_steps = int(rng.integers(-1000, 1 << 31))
        h.execution.replan_threshold = int(rng.integers(-1000, 1 << 31))
    return h


def infer_cases(rng: np.random.Generator, desc: pb.DescribeResponse, n: int) -> Iterator[bytes]:
    """Raw bytes for PolicyService/Infer: 1/6 random, 1/3 mutated valid, 1/2 structured malformed."""
    d = desc.action_space.accepted_proprio_dims[0] if desc.action_space.accepted_proprio_dims else 3
    for i in range(n):
        r = i % 6
        if r == 0:
            yield rng.bytes(int(rng.integers(0, 600)))
            continue
        req = pb.InferRequest(session=valid_header(desc), observation=valid_observation(desc, rng))
        if r in (1, 2):
            yield mutate(req.SerializeToString(), rng)
            continue
        which = int(rng.integers(0, 4))
        if which == 0:
            req.observation.proprio.CopyFrom(bad_tensor(rng, d))
        elif which == 1 and len(req.observation.cameras):
            req.observation.cameras[int(rng.integers(0, len(req.observation.cameras)))].image.CopyFrom(bad_image(rng))
        elif which == 2:
            req.session.CopyFrom(bad_header(rng, desc))
        else:
            req.noise.CopyFrom(bad_tensor(rng, d))
            if rng.random() < 0.3 and len(req.observation.cameras):
                req.observation.cameras[0].extrinsics.CopyFrom(bad_tensor(rng, 16))
        yield req.SerializeToString()


def stream_cases(rng: np.random.Generator, desc: pb.DescribeResponse, n_streams: int, per_stream: int = 6
                 ) -> Iterator[list[bytes]]:
    """Raw StreamRequest sequences: frame-index abuse, header misuse, bad/mutated messages mid-stream."""
    for _ in range(n_streams):
        kind = int(rng.integers(0, 6))
        head = pb.StreamRequest(header=valid_header(desc)).SerializeToString()
        if kind == 0:  # frame indices: repeated, decreasing, extreme
            pool = [0, 5, 3, 1, (1 << 64) - 1, 1 << 63, 7]  # frame_index is uint64
            frames = [0, 0] if rng.random() < 0.3 else [pool[int(j)] for j in rng.integers(0, len(pool), per_stream)]
            msgs = [head] + [pb.StreamRequest(observation=valid_observation(desc, rng, int(f))).SerializeToString()
                             for f in frames]
        elif kind == 1:  # header twice / observation first / empty message
            obs = pb.StreamRequest(observation=valid_observation(desc, rng)).SerializeToString()
            msgs = [[head, head], [obs, head], [b""], [head, b"", obs]][int(rng.integers(0, 4))]
        elif kind == 2:
            msgs = [pb.StreamRequest(header=bad_header(rng, desc)).SerializeToString()]
        elif kind == 3:  # a bad observation after good ones
            good = [pb.StreamRequest(observation=valid_observation(desc, rng, f)).SerializeToString() for f in range(2)]
            bad = valid_observation(desc, rng, 2)
            d = desc.action_space.accepted_proprio_dims[0] if desc.action_space.accepted_proprio_dims else 3
            if rng.random() < 0.5 or not len(bad.cameras):
                bad.proprio.CopyFrom(bad_tensor(rng, d))
            else:
                bad.cameras[0].image.CopyFrom(bad_image(rng))
            msgs = [head, *good, pb.StreamRequest(observation=bad).SerializeToString()]
        elif kind == 4:  # mutated messages
            msgs = [head] + [mutate(pb.StreamRequest(observation=valid_observation(desc, rng, f)).SerializeToString(), rng)
                             for f in range(per_stream)]
        else:
            msgs = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 4)))]
        yield msgs


# ------------------------------------------------------------------------------ gRPC runner
async def fuzz_grpc(target: str, n_unary: int, n_streams: int, seed: int = 0, deadline_s: float = 10.0,
                    concurrency: int = 8) -> FuzzReport:
    """Raw-bytes Infer calls and Stream sequences against ``target``; counts codes, hangs, unnamed errors."""
    rng = np.random.default_rng(seed)
    report = FuzzReport("grpc")
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        desc = pb.DescribeResponse.FromString(await ch.unary_unary(DESCRIBE)(pb.DescribeRequest().SerializeToString(),
                                                                            timeout=deadline_s))
        infer = ch.unary_unary(INFER)
        stream = ch.stream_stream(STREAM)
        sem = asyncio.Semaphore(concurrency)

        async def one_unary(raw: bytes) -> None:
            report.messages += 1
            async with sem:
                s = time.perf_counter()
                try:
                    await infer(raw, timeout=deadline_s)
                    report.add("OK", elapsed=time.perf_counter() - s)
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        report.hangs += 1
                    report.add(e.code().name, e.details() or "", time.perf_counter() - s,
                               acceptable=e.code() in OK_CODES)

        async def one_stream(msgs: list[bytes]) -> None:
            report.messages += len(msgs)
            box: list = []

            async def reqs():
                for m in msgs:
                    if box and box[0].done():  # the server has ended the call: stop writing
                        return
                    yield m
            async with sem:
                s = time.perf_counter()
                try:
                    call = stream(reqs(), timeout=deadline_s)
                    box.append(call)
                    async for _ in call:
                        pass
                    report.add("OK", elapsed=time.perf_counter() - s)
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        report.hangs += 1
                    if e.code() == grpc.StatusCode.INTERNAL and e.details() == CLIENT_WRITE_RACE:
                        # grpc.aio's client fails a write racing the server's final status (grpc/grpc#36066):
                        # the server answered; this client could not read it. Counted apart, not a server fault.
                        report.add("CLIENT_WRITE_RACE", "client: write after the server's status",
                                   time.perf_counter() - s)
                        return
                    report.add(e.code().name, e.details() or "", time.perf_counter() - s,
                               acceptable=e.code() in OK_CODES)

        await asyncio.gather(*(one_unary(r) for r in infer_cases(rng, desc, n_unary)),
                             *(one_stream(m) for m in stream_cases(rng, desc, n_streams)))
    report.seconds = time.perf_counter() - t0
    return report


async def well_behaved_stream(target: str, desc: pb.DescribeResponse, n: int, rate_hz: float = 30.0,
                              seed: int = 1) -> tuple[grpc.StatusCode, list[float]]:
    """A good 30 Hz stream (raw RGB observations): final status and per-reply latencies in ms."""
    from xvla.benchmarks.stream_client import run_stream  # the tests' robot stand-in

    rng = np.random.default_rng(seed)
    res = await run_stream(target, valid_header(desc), lambda f: valid_observation(desc, rng, f), n=n, rate_hz=rate_hz)
    return res.code, [t.latency_ms for t in res.ticks]


# ------------------------------------------------------------------------------ bridge payloads
def _ndarray(rng: np.random.Generator) -> dict:
    """openpi ``__ndarray__`` maps, mostly inconsistent."""
    dtype = str(rng.choice(["<f4", "|u1", "<i8", "|O", "<c16", "zz", "<f4"]))
    shape = _SHAPES[int(rng.integers(0, len(_SHAPES)))] if rng.random() < 0.6 else [int(rng.integers(0, 50))]
    return {b"__ndarray__": True, b"data": rng.bytes(int(rng.integers(0, 256))), b"dtype": dtype, b"shape": shape}


def _value(rng: np.random.Generator, depth: int = 0) -> Any:
    k = int(rng.integers(0, 9 if depth < 4 else 5))
    if k == 0:
        return int(rng.integers(-(1 << 62), 1 << 62))
    if k == 1:
        return float(rng.choice([np.nan, np.inf, -1e308, 0.5]))
    if k == 2:
        return rng.bytes(int(rng.integers(0, 40))).hex()
    if k == 3:
        return None
    if k == 4:
        return rng.bytes(int(rng.integers(0, 40)))
    if k in (5, 6):
        return [_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if k == 7:
        return _ndarray(rng)
    return {str(_value(rng, depth + 1))[:20]: _value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


def bridge_observation(rng: np.random.Generator, keys: dict[str, str]) -> dict:
    """A BEHAVIOR-style observation with one part broken (or all parts random)."""
    from xvla.agents.bridges.codecs import packb  # noqa: F401 (ensures the agent extra is installed)

    obs: dict[str, Any] = {
        keys["head"]: np.zeros((32, 32, 3), np.uint8), keys["left_wrist"]: np.zeros((32, 32, 3), np.uint8),
        keys["right_wrist"]: np.zeros((32, 32, 3), np.uint8), keys["proprio"]: np.zeros(256, np.float32),
        "task_id": np.array([1], np.int64)}
    victim = list(obs)[int(rng.integers(0, len(obs)))]
    k = int(rng.integers(0, 7))
    if k == 0:
        obs[victim] = _value(rng)
    elif k == 1:
        obs[victim] = np.zeros(tuple(int(x) for x in rng.integers(0, 5, int(rng.integers(0, 5)))), np.uint8)
    elif k == 2:
        obs[victim] = np.full(3, np.nan, np.float32)
    elif k == 3:
        obs[keys["head"]] = np.zeros((1, int(rng.choice([9000, 200_000])), 3), np.uint8)
    elif k == 4:
        del obs[victim]
    elif k == 5:
        obs["__action_chunk_size__"] = _value(rng)
    else:
        obs["task_id"] = _value(rng)
    return obs


def zmq_cases(rng: np.random.Generator, keys: dict[str, str], n: int) -> Iterator[list[bytes]]:
    """Frames of ZeroMQ requests: random bytes, mutated msgpack, broken observations, multipart."""
    from xvla.agents.bridges.codecs import packb

    for i in range(n):
        r = i % 5
        if r == 0:
            yield [rng.bytes(int(rng.integers(0, 300)))]
        elif r == 1:
            yield [mutate(packb({"endpoint": "get_action", "data": bridge_observation(rng, keys)}), rng)]
        elif r == 2:
            yield [packb({"endpoint": "get_action", "data": bridge_observation(rng, keys)})]
        elif r == 3:
            yield [packb({"endpoint": _value(rng), "data": _value(rng), "api_token": _value(rng)})]
        else:
            yield [packb({"endpoint": "ping"}) for _ in range(int(rng.integers(2, 5)))]  # multipart


def json_cases(rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """HTTP /act bodies: random bytes, broken JSON, wrong types, huge/ragged/deep values."""
    for i in range(n):
        r = i % 6
        if r == 0:
            yield rng.bytes(int(rng.integers(0, 300)))
        elif r == 1:
            yield mutate(json.dumps({"proprio": [0.0] * 23, "instruction": "pick"}).encode(), rng)
        elif r == 2:
            yield json.dumps({"proprio": _json_value(rng), "instruction": _json_value(rng)}).encode()
        elif r == 3:
            yield ("[" * int(rng.integers(100, 5000)) + "]" * 3).encode()
        elif r == 4:
            yield json.dumps({"image0": _json_value(rng), "proprio": [[1, 2], [3]], "domain_id": _json_value(rng)}).encode()
        else:
            yield json.dumps({"proprio": [1e400 if rng.random() < 0.5 else 2 ** 40] * 23,
                              "steps": int(rng.integers(-10, 1 << 40))}).encode().replace(b"Infinity", b"1e999")


def _json_value(rng: np.random.Generator, depth: int = 0) -> Any:
    v = _value(rng, depth)

    def clean(x: Any) -> Any:
        if isinstance(x, bytes):
            return x.hex()
        if isinstance(x, float) and not np.isfinite(x):
            return 1e308
        if isinstance(x, dict):
            return {str(k): clean(vv) for k, vv in x.items()}
        if isinstance(x, list):
            return [clean(vv) for vv in x]
        return x
    return clean(v)



# ------------------------------------------------------------------------------ bridge runners (sync clients)
def fuzz_zmq(port: int, keys: dict[str, str], n: int, seed: int = 0, deadline_s: float = 10.0) -> FuzzReport:
    """REQ client: every request (also multipart ones) must get a msgpack map back within the deadline."""
    import zmq

    from xvla.agents.bridges.codecs import packb, unpackb

    rng = np.random.default_rng(seed)
    report = FuzzReport("zmq")
    ctx = zmq.Context()

    def sock():
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.RCVTIMEO, int(deadline_s * 1000))
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{port}")
        return s
    s = sock()
    t0 = time.perf_counter()
    try:
        for frames in zmq_cases(rng, keys, n):
            start = time.perf_counter()
            s.send_multipart(frames)
            try:
                reply = unpackb(s.recv())
            except zmq.Again:
                report.hangs += 1
                report.add("hang", "no reply", time.perf_counter() - start, named_required=False, acceptable=False)
                s.close(0)
                s = sock()
                continue
            ok = isinstance(reply, dict) and ("error" in reply or "action" in reply or "status" in reply)
            code = "error" if isinstance(reply, dict) and "error" in reply else "ok"
            report.add(code, str(reply.get("error", "")) if isinstance(reply, dict) else "", time.perf_counter() - start,
                       named_required=False, acceptable=ok)
        s.send(packb({"endpoint": "ping"}))
        alive = unpackb(s.recv()).get("status") == "ok"
        if not alive:
            report.bad_codes.append("ping after the fuzz run failed")
    finally:
        s.close(0)
        ctx.destroy(linger=0)
    report.seconds = time.perf_counter() - t0
    return report


def fuzz_websocket(port: int, keys: dict[str, str], n: int, seed: int = 0, deadline_s: float = 10.0) -> FuzzReport:
    """openpi websocket client: binary (random/mutated msgpack) and text frames; replies or clean closes."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from xvla.agents.bridges.codecs import packb

    rng = np.random.default_rng(seed)
    report = FuzzReport("websocket")
    url = f"ws://127.0.0.1:{port}"
    ws = connect(url, open_timeout=deadline_s, max_size=None)
    ws.recv(timeout=deadline_s)  # metadata
    t0 = time.perf_counter()
    try:
        for i in range(n):
            r = i % 5
            if r == 0:
                frame: bytes | str = rng.bytes(int(rng.integers(0, 300)))
            elif r == 1:
                frame = mutate(packb(bridge_observation(rng, keys)), rng)
            elif r == 2:
                frame = packb(bridge_observation(rng, keys))
            elif r == 3:
                frame = rng.bytes(int(rng.integers(0, 60))).hex()  # a text frame
            else:
                frame = packb(_value(rng))
            start = time.perf_counter()
            try:
                ws.send(frame)
                reply = ws.recv(timeout=deadline_s)
                code = "error" if isinstance(reply, str) else "reply"
                report.add(code, reply if isinstance(reply, str) else "", time.perf_counter() - start, named_required=False)
            except TimeoutError:
                report.hangs += 1
                report.add("hang", "no reply", time.perf_counter() - start, named_required=False, acceptable=False)
                ws.close()
                ws = connect(url, open_timeout=deadline_s, max_size=None)
                ws.recv(timeout=deadline_s)
            except ConnectionClosed as e:
                # a close is the protocol's way to refuse; 1011 (internal error) is not acceptable
                rcvd = getattr(e, "rcvd", None)
                close_code = getattr(rcvd, "code", None)
                report.add(f"closed:{close_code}", str(e), time.perf_counter() - start, named_required=False,
                           acceptable=close_code != 1011)
                ws = connect(url, open_timeout=deadline_s, max_size=None)
                ws.recv(timeout=deadline_s)
    finally:
        ws.close()
    report.seconds = time.perf_counter() - t0
    return report


def fuzz_http(port: int, n: int, seed: int = 0, deadline_s: float = 10.0) -> FuzzReport:
    """POST /act with fuzzed bodies: 5xx other than 503 is a server fault; /healthz must stay up."""
    import urllib.error
    import urllib.request

    rng = np.random.default_rng(seed)
    report = FuzzReport("http")
    t0 = time.perf_counter()
    for body in json_cases(rng, n):
        start = time.perf_counter()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/act", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=deadline_s) as resp:
                status, text = resp.status, ""
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()[:200].decode("utf-8", "replace")
        except (TimeoutError, urllib.error.URLError) as e:
            report.hangs += 1
            report.add("hang", str(e), time.perf_counter() - start, named_required=False, acceptable=False)
            continue
        report.add(str(status), text, time.perf_counter() - start, named_required=False, acceptable=status < 500)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=deadline_s) as resp:
        if resp.status != 200:
            report.bad_codes.append(f"healthz {resp.status} after the fuzz run")
    report.seconds = time.perf_counter() - t0
    return report
