"""Test clients that behave like the BEHAVIOR-1K evaluators' websocket clients (written from reading them).

Read in BEHAVIOR-1K (newest stored versions; the tag ``v3.9.3`` was not in the snapshot):

2025 (``OmniGibson/omnigibson/learning/utils/network_utils.py`` ``WebsocketClientPolicy``, used by
``learning/eval.py`` with policy=websocket):
  - polls ``GET http://host:port/healthz`` (2 s timeout) until it is ok, then opens the websocket
    (no compression, no size limit) and blocks on one msgpack metadata frame;
  - ``act(obs)``: sends the msgpack observation and waits for the reply with no deadline; a text
    frame raises ``RuntimeError("Error in inference server: ...")``; a reply without ``action`` is
    retried; tensors are packed as ``{__torch__: True, data, dtype: <name>, shape}``;
  - ``reset()``: sends ``{"reset": True}`` and does not wait for a reply.
  Observations: ``robot_r1::robot_r1:<camera>:Camera:0::rgb`` RGBA uint8 (224x224 with
  ``RGBLowResWrapper``; 720x720 head / 480x480 wrists at full resolution), ``robot_r1::proprio``
  256 float32 (``learning/utils/eval_utils.py`` ``PROPRIOCEPTION_INDICES``), ``task_id`` [1] int64.

2026 (``OmniGibson/omnigibson/eval/utils/network_utils.py`` ``WebsocketClientPolicy`` and
``eval/policies.py`` ``WebsocketPolicy`` / ``MultiWebsocketPolicy``):
  - the same health check and metadata handshake, numpy arrays packed as ``__ndarray__`` maps;
  - every query has a deadline (600 s, or the rollout's remaining budget): ``recv(timeout=...)``;
    when it passes the socket is closed and ``PolicyTimeoutError`` raised;
  - ``action_chunk_size`` K > 1 adds ``__action_chunk_size__: K`` to each request; the reply must
    then carry ``action_chunk`` of shape ``(*action.shape[:-1], K, D)`` whose row 0 equals
    ``action`` exactly (``torch.equal``), and the next K-1 ``act`` calls replay it without a request;
  - ``MultiWebsocketPolicy``: one client per environment (own endpoint), all queried at once from a
    thread pool, every observation key with a leading batch axis of 1; a (1, D) reply is squeezed
    and must then be (D,).
  Observations: ``robot_r1::proprio`` 61 float32 (``eval/r1pro.yaml`` ``proprio_obs``), RGBA
  cameras (224x224, or ``RGBDFullResWrapper`` 720/480 with ``::depth_linear``), plus
  ``robot_r1::cam_rel_poses`` and ``task_id`` [1] int64.
"""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import numpy as np
from websockets.sync.client import connect

CAMERAS = {
    "head": "robot_r1::robot_r1:zed_link:Camera:0",
    "left_wrist": "robot_r1::robot_r1:left_realsense_link:Camera:0",
    "right_wrist": "robot_r1::robot_r1:right_realsense_link:Camera:0",
}
ACTION_CHUNK_REQUEST_KEY = "__action_chunk_size__"


class PolicyTimeoutError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- msgpack
def _pack_ndarray(obj: Any) -> Any:  # 2026 (and openpi): numpy arrays
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _pack_torch(obj: Any) -> Any:  # 2025: the observations are torch tensors
    if isinstance(obj, np.ndarray):
        return {b"__torch__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.name, b"shape": tuple(obj.shape)}
    return _pack_ndarray(obj)


def _unpack(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_unpack)


# ---------------------------------------------------------------------------------- clients
class EvaluatorClient:
    """One environment's websocket client (``year`` 2025 or 2026)."""

    def __init__(self, host: str, port: int, year: int = 2026, action_chunk_size: int = 0,
                 health_timeout_s: float = 30.0) -> None:
        self.host, self.port, self.year = host, port, year
        self.action_chunk_size = max(0, int(action_chunk_size)) if year >= 2026 else 0
        self._chunks = self.action_chunk_size > 1
        self._chunk: np.ndarray | None = None
        self._chunk_index = 0
        self.deadline: float | None = None  # absolute time.monotonic(), 2026 only
        self.health_timeout_s = health_timeout_s
        self.ws = None
        self.metadata: dict | None = None
        self.requests = 0
        self.replies: list[dict] = []
        self._packer = msgpack.Packer(default=_pack_torch if year == 2025 else _pack_ndarray)

    def _wait_for_server(self) -> None:
        url = f"http://{self.host}:{self.port}/healthz"
        give_up = time.monotonic() + self.health_timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if 200 <= r.status < 400:
                        break
            except Exception:  # noqa: BLE001 - the evaluator retries on anything
                pass
            if time.monotonic() > give_up:
                raise ConnectionError(f"health check failed for {url}")
            time.sleep(0.2)  # the evaluator sleeps 5 s; shorter here to keep tests fast
        self.ws = connect(f"ws://{self.host}:{self.port}", compression=None, max_size=None, ping_interval=60,
                          ping_timeout=None if self.year >= 2026 else 300)
        self.metadata = unpackb(self.ws.recv(timeout=10))

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PolicyTimeoutError("Policy evaluation time budget expired")
        return left

    def act(self, obs: dict) -> np.ndarray:
        if self._chunk is not None and self._chunk_index < self._chunk.shape[-2]:
            action = self._chunk[..., self._chunk_index, :].copy()
            self._chunk_index += 1
            return action
        if self.ws is None:
            self._wait_for_server()
        request = dict(obs)
        if self._chunks:
            request[ACTION_CHUNK_REQUEST_KEY] = self.action_chunk_size
        self.ws.send(self._packer.pack(request))
        self.requests += 1
        try:
            response = self.ws.recv(timeout=self._remaining())
        except TimeoutError as e:
            self.ws.close()
            self.ws = None
            raise PolicyTimeoutError("Action query exceeded its time limit") from e
        if isinstance(response, str):
            raise RuntimeError(f"Error in inference server:\n{response}")
        reply = unpackb(response)
        if "action" not in reply:
            raise RuntimeError(f"Server response missing 'action' key: {reply}")
        self.replies.append(reply)
        action = np.array(reply["action"], dtype=np.float32)
        if self._chunks:
            if "action_chunk" not in reply:
                self._chunks = False  # the evaluator falls back to one request per step
            else:
                chunk = np.array(reply["action_chunk"], dtype=np.float32)
                expected = (*action.shape[:-1], self.action_chunk_size, action.shape[-1])
                if chunk.shape != expected:
                    raise RuntimeError(f"Server returned action_chunk shape {chunk.shape}, expected {expected}.")
                if not np.array_equal(chunk[..., 0, :], action):
                    raise RuntimeError("Server action must exactly equal action_chunk[..., 0, :].")
                self._chunk, self._chunk_index = chunk, 1
        return action

    def reset(self) -> None:
        self._chunk, self._chunk_index = None, 0
        if self.ws is None:
            self._wait_for_server()
        self.ws.send(self._packer.pack({"reset": True}))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


class MultiEnvClient:
    """``MultiWebsocketPolicy``: one client per environment, stepped together, batch axis of 1 on every key."""

    def __init__(self, host: str, ports: list[int], action_chunk_size: int = 0) -> None:
        self.clients = [EvaluatorClient(host, p, 2026, action_chunk_size) for p in ports]
        self.pool = ThreadPoolExecutor(max_workers=len(self.clients))

    def reset(self) -> None:
        list(self.pool.map(lambda c: c.reset(), self.clients))

    def forward(self, obs: list[dict], action_dim: int = 23) -> np.ndarray:
        def one(i: int) -> np.ndarray:
            a = self.clients[i].act({k: np.expand_dims(v, 0) for k, v in obs[i].items()})
            if a.ndim == 2 and a.shape[0] == 1:
                a = a[0]
            if a.shape != (action_dim,):
                raise ValueError(f"Policy {i} returned action shape {a.shape}")
            return a

        return np.stack(list(self.pool.map(one, range(len(self.clients)))))

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------- observations
SIZES = {"224": (224, 224), "full": (720, 480)}  # (head, wrist) square sizes


def observation(year: int, size: str = "224", seed: int = 0, task_id: int = 0, depth: bool = False) -> dict:
    """One observation as the evaluator sends it (RGBA cameras; 256-d proprio in 2025, 61-d in 2026)."""
    rng = np.random.default_rng(seed)
    head, wrist = (224, 224) if size == "224" else (720, 480)
    obs: dict = {}
    for name, key in CAMERAS.items():
        s = head if name == "head" else wrist
        obs[f"{key}::rgb"] = rng.integers(0, 256, (s, s, 4), dtype=np.uint8)
        if depth:
            obs[f"{key}::depth_linear"] = rng.random((s, s), dtype=np.float32) * 3.0
    obs["robot_r1::proprio"] = (rng.standard_normal(256 if year == 2025 else 61) * 0.1).astype(np.float32)
    if year >= 2026:
        obs["robot_r1::cam_rel_poses"] = rng.standard_normal(21).astype(np.float32)
    obs["task_id"] = np.array([task_id], dtype=np.int64)
    return obs
