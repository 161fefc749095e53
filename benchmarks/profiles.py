"""Benchmark profiles: which presets, backends, precisions, batch sizes and fleet sizes a device runs.

Expected memory is the weights at the profile's widest precision plus an activation
allowance; ``expected_memory_gib()`` computes it from the counted parameters so a profile
can be checked before a GPU is rented. A profile's results go to
``benchmarks/results/<machine>/``; ``quick()`` is the CI cut of any profile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

# Backends, in the order they are reported. Each is skipped with a reason when absent.
BACKENDS = ("torch", "ort-cpu", "ort-cpu-nospin", "ort-cuda", "ort-tensorrt", "tensorrt")


@dataclass(frozen=True)
class Profile:
    name: str
    device: str  # cpu | cuda
    presets: tuple[str, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup: int = 3
    iters: int = 30
    max_seconds_per_case: float = 20.0  # a case stops sampling after this (>= 3 samples)
    steps: int = 10
    # end to end through gRPC
    infer_requests: int = 30
    stream_ticks: int = 150
    # closed loop
    fleet_sizes: tuple[int, ...] = (1, 2, 4)
    fleet_seconds: float = 10.0
    fleet_refine: bool = True  # bisect between the last K that held and the first that starved
    closed_loop_presets: tuple[str, ...] = ()  # default: the first preset
    # peer comparison
    peer_requests: int = 30
    peer_presets: tuple[str, ...] = ()  # default: the first preset
    memory_gib: float = 0.0  # the device's memory (0: unknown / host RAM)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def quick(self) -> "Profile":
        """Seconds, not minutes: the test suite's cut (tiny, batch 1, few iterations, K = 1, 2)."""
        return dataclasses.replace(
            self, name=f"{self.name}-quick", presets=self.presets[:1], precisions=self.precisions[:1],
            batch_sizes=(1,), warmup=1, iters=3, max_seconds_per_case=2.0, infer_requests=5, stream_ticks=30,
            fleet_sizes=(1, 2), fleet_seconds=1.5, fleet_refine=False, peer_requests=5,
            closed_loop_presets=self.presets[:1], peer_presets=self.presets[:1])

    def with_presets(self, presets: tuple[str, ...]) -> "Profile":
        return dataclasses.replace(self, presets=presets, closed_loop_presets=(), peer_presets=())

    @property
    def fleet_presets(self) -> tuple[str, ...]:
        return self.closed_loop_presets or self.presets[:1]

    @property
    def comparison_presets(self) -> tuple[str, ...]:
        return self.peer_presets or self.presets[:1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expected_memory_gib(params: int, precision: str, batch: int, activation_gib_per_sample: float | None = None) -> float:
    """Weights + a per-sample activation allowance + 1 GiB of runtime/workspace.

    The allowance is 0.25 GiB per sample for the 0.9B model (its activations at 3 x 224^2
    are ~0.1-0.2 GiB per sample in fp16; 0.25 is a margin), scaled by parameter count for
    other sizes (at least 0.01 GiB)."""
    if activation_gib_per_sample is None:
        activation_gib_per_sample = max(0.01, 0.25 * params / 0.9e9)
    return params * BYTES[precision] / 2**30 + batch * activation_gib_per_sample + 1.0


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu", device="cpu", presets=("tiny", "xvla-small"), backends=("torch", "ort-cpu", "ort-cpu-nospin"),
        precisions=("fp32",), batch_sizes=(1, 2, 4), warmup=2, iters=20, max_seconds_per_case=8.0,
        infer_requests=20, stream_ticks=150, fleet_sizes=(1, 2, 4, 8), fleet_seconds=8.0,
        closed_loop_presets=("tiny", "xvla-small"), peer_requests=30, peer_presets=("tiny",),
        notes="2-core VM: agents, server and peers share the same cores; fp32 only (no AVX512-BF16)."),
    "a6000": Profile(
        name="a6000", device="cuda", presets=("xvla-0.9b", "da3-xvla", "tiny"),
        backends=("torch", "ort-cuda", "ort-tensorrt", "tensorrt"), precisions=("fp16", "fp32"),
        batch_sizes=(1, 2, 4, 8, 16), warmup=10, iters=100, max_seconds_per_case=30.0,
        infer_requests=100, stream_ticks=900, fleet_sizes=(1, 2, 4, 8, 16, 32), fleet_seconds=20.0,
        closed_loop_presets=("xvla-0.9b",), peer_requests=100, peer_presets=("xvla-0.9b",), memory_gib=48.0,
        notes="RTX A6000 48 GB: weights 0.9B 1.6 GiB fp16 / 3.3 GiB fp32, DA3-XVLA (1.39B) 2.6 / 5.2 GiB."),
    "h200": Profile(
        name="h200", device="cuda", presets=("xvla-0.9b", "da3-xvla", "tiny"),
        backends=("torch", "ort-cuda", "ort-tensorrt", "tensorrt"), precisions=("fp16", "bf16", "fp32"),
        batch_sizes=(1, 2, 4, 8, 16, 32), warmup=10, iters=200, max_seconds_per_case=30.0,
        infer_requests=200, stream_ticks=900, fleet_sizes=(1, 2, 4, 8, 16, 32, 64), fleet_seconds=20.0,
        closed_loop_presets=("xvla-0.9b",), peer_requests=200, peer_presets=("xvla-0.9b",), memory_gib=141.0,
        notes="H200 141 GB: DA3-XVLA fp32 at batch 32 is ~19 GiB expected; memory is never the limit, time is."),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[name]
