"""The observations every protocol sends: seeded R1Pro-like frames, identical across protocols."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xvla.core.embodiments.r1pro import R1PRO_CAMERAS as CAMERAS

NATIVE_SIZES = {"head": (720, 720), "left_wrist": (480, 480), "right_wrist": (480, 480)}  # BEHAVIOR-1K R1Pro
INSTRUCTION = "turn on the radio"


@dataclass
class BenchObservation:
    frame: int
    images: dict[str, np.ndarray]  # name -> uint8 [H, W, 3]
    proprio: np.ndarray  # float32 [D]
    instruction: str = INSTRUCTION


def observation_pool(n: int, proprio_dim: int, size: tuple[int, int] | None = (224, 224), seed: int = 0) -> list[BenchObservation]:
    """``n`` distinct observations; ``size=None`` gives the cameras' native sizes (720^2 head, 480^2 wrists)."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        images = {c: rng.integers(0, 256, (*(size or NATIVE_SIZES[c]), 3), dtype=np.uint8) for c in CAMERAS}
        pool.append(BenchObservation(i, images, (rng.standard_normal(proprio_dim) * 0.1).astype(np.float32)))
    return pool
