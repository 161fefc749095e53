"""Shared test plumbing: an asyncio loop on a thread (bridges run there), free ports, BEHAVIOR observations."""

from __future__ import annotations

import asyncio
import socket
import threading

import numpy as np

from xvla.agents.bridges.observations import BEHAVIOR_CAMERA_KEYS, BEHAVIOR_PROPRIO_KEY


class LoopThread:
    """``with LoopThread() as lt: lt.run(coro)`` runs coroutines on a private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def behavior_observation(seed: int = 0, task_id: int = 1, rgba: bool = True) -> dict:
    """An observation as the BEHAVIOR-1K harness sends it (RGBA cameras at native size, raw 256-d proprio)."""
    rng = np.random.default_rng(seed)
    c = 4 if rgba else 3
    return {
        BEHAVIOR_CAMERA_KEYS["head"]: rng.integers(0, 256, (720, 720, c), dtype=np.uint8),
        BEHAVIOR_CAMERA_KEYS["left_wrist"]: rng.integers(0, 256, (480, 480, c), dtype=np.uint8),
        BEHAVIOR_CAMERA_KEYS["right_wrist"]: rng.integers(0, 256, (480, 480, c), dtype=np.uint8),
        BEHAVIOR_PROPRIO_KEY: rng.standard_normal(256).astype(np.float32),
        "task_id": np.array([task_id], dtype=np.int64),
        "robot_r1::robot_r1:zed_link:Camera:0::depth_linear": np.zeros((8, 8), np.float32),  # ignored extra key
    }
