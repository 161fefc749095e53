"""Jittered exponential backoff for reconnects.

"Full jitter" (a uniform draw in [0, cap]) spreads a fleet of robots that lost the same
server over the whole window, instead of having them all knock again at the same
instant when it comes back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class BackoffConfig:
    initial_s: float = 0.05
    max_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 1.0  # 1.0 = full jitter (uniform in [0, cap]); 0.0 = deterministic cap

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError(f"backoff: need 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.multiplier < 1.0:
            raise ValueError(f"backoff: multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff: jitter must be in [0, 1], got {self.jitter}")


class Backoff:
    """Delays for consecutive failures; ``reset()`` after a success."""

    def __init__(self, config: BackoffConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng or random.Random()
        self.failures = 0

    def cap(self) -> float:
        """The upper bound of the next delay (without jitter)."""
        c = self.config
        return min(c.max_s, c.initial_s * c.multiplier ** self.failures)

    def next_delay(self) -> float:
        cap = self.cap()
        self.failures += 1
        j = self.config.jitter
        return cap * (1.0 - j) + self._rng.uniform(0.0, cap * j)

    def reset(self) -> None:
        self.failures = 0
