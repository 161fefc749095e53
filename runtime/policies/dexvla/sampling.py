"""Numpy pieces of a DexVLA chunk around the engines: FiLM row spans and the DDIM loop.

The same semantics as the export side's ``film.film_masks`` / ``sampler.DDIMSampler`` (which the
conformance tests check against the official code); here without torch for the serving path.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def film_row_masks(sequences: np.ndarray, prompt_len: int, n_new: np.ndarray, pad_token_id: int,
                   total_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, total_rows) float32 masks: prompt span [start:L] (start = pad-id count in the sample's own tokens)
    and reasoning span [L:L + n_new - 1] (every generated token but the last)."""
    b = sequences.shape[0]
    own = np.arange(sequences.shape[1])[None] < (prompt_len + n_new)[:, None]
    start = ((sequences == pad_token_id) & own).sum(axis=1)
    rows = np.broadcast_to(np.arange(total_rows)[None], (b, total_rows))
    input_mask = (rows >= start[:, None]) & (rows < prompt_len)
    reasoning_mask = (rows >= prompt_len) & (rows < prompt_len + n_new[:, None] - 1)
    return input_mask.astype(np.float32), reasoning_mask.astype(np.float32)


def squaredcos_cap_v2_alphas_cumprod(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
                      for i in range(num_train_timesteps)], dtype=np.float32)
    # torch's CPU cumprod (what diffusers runs) accumulates float32 in float64
    return np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)


class DDIM:
    """Deterministic DDIM (eta 0), epsilon prediction, x0 clipped to [-1, 1], "leading" spacing."""

    def __init__(self, num_train_timesteps: int, num_inference_steps: int) -> None:
        if not 0 < num_inference_steps <= num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in 1..{num_train_timesteps}, got {num_inference_steps}")
        self.ratio = num_train_timesteps // num_inference_steps
        self.alphas_cumprod = squaredcos_cap_v2_alphas_cumprod(num_train_timesteps)
        self.timesteps = (np.arange(num_inference_steps) * self.ratio)[::-1].astype(np.int64)

    def step(self, eps: np.ndarray, t: int, x: np.ndarray) -> np.ndarray:
        prev = t - self.ratio
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else np.float32(1.0)
        x0 = np.clip((x - np.sqrt(np.float32(1) - a_t) * eps) / np.sqrt(a_t), -1.0, 1.0)
        return (np.sqrt(a_prev) * x0 + np.sqrt(np.float32(1) - a_prev) * eps).astype(np.float32)

    def sample(self, denoise: Callable[[np.ndarray, np.ndarray], np.ndarray], noise: np.ndarray) -> np.ndarray:
        """denoise(x (B, T, A), t (B,) int64) -> eps; ``noise`` is one draw per sample."""
        x = noise.astype(np.float32)
        for t in self.timesteps.tolist():
            x = self.step(denoise(x, np.full((x.shape[0],), t, dtype=np.int64)), t, x)
        return x
