"""DDIM sampling as DexVLA runs it (diffusers ``DDIMScheduler`` semantics), our own code.

Schedule: ``squaredcos_cap_v2`` betas over ``num_train_timesteps`` (100), epsilon prediction, x0 clipped
to [-1, 1], ``set_alpha_to_one`` (alpha_prev = 1 below step 0), ``steps_offset`` 0, "leading" spacing:
``timesteps = (arange(n) * (T // n))[::-1]``, eta = 0.  The initial noise is an *input* (one draw per
sample): the official head draws one (1, chunk, A) noise for the whole batch, which is wrong for B > 1.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch


def squaredcos_cap_v2_alphas_cumprod(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """diffusers' ``betas_for_alpha_bar(cosine)`` (python floats) -> float32 betas -> cumprod(1 - beta)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
             for i in range(num_train_timesteps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float32), dim=0)


def leading_timesteps(num_train_timesteps: int, num_inference_steps: int) -> torch.Tensor:
    if not 0 < num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in 1..{num_train_timesteps}, got {num_inference_steps}")
    ratio = num_train_timesteps // num_inference_steps
    return torch.from_numpy((np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64))


class DDIMSampler:
    def __init__(self, num_train_timesteps: int, num_inference_steps: int) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.num_inference_steps = num_inference_steps
        self.alphas_cumprod = squaredcos_cap_v2_alphas_cumprod(num_train_timesteps)
        self.final_alpha_cumprod = torch.tensor(1.0)
        self.timesteps = leading_timesteps(num_train_timesteps, num_inference_steps)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x0) for per-sample timesteps t (B,) (training)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM update x_t -> x_{t - T//n} (eta = 0, x0 clipped to [-1, 1])."""
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        x0 = ((x - b_t ** 0.5 * eps) / a_t ** 0.5).clamp(-1.0, 1.0)
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    def sample(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
               trace: Optional[dict] = None) -> torch.Tensor:
        """Run the loop from ``noise`` (B, T, A); ``denoise(x, t_0d)`` returns eps.  ``trace`` collects x/eps."""
        x = noise
        for t in self.timesteps.tolist():
            eps = denoise(x, torch.tensor(t, dtype=torch.long))
            if trace is not None:
                trace.setdefault("x", []).append(x)
                trace.setdefault("eps", []).append(eps)
            x = self.step(eps, t, x)
        if trace is not None:
            trace["x"].append(x)
        return x
