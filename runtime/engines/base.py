"""The one interface every engine implements: named numpy arrays in, named numpy arrays out.

Keeping it this small is what lets the batcher, the fake engines of the tests and the
native TensorRT engine stand in for each other without the policy noticing.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be created or could not run."""


class ProviderUnavailableError(EngineError):
    """A requested execution provider is not usable on this machine (and fallback was not allowed)."""


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype name and shape (ints, or strings for dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class EngineInfo:
    """What Describe reports about an engine."""

    graph: str
    backend: str  # onnxruntime | tensorrt | fake | torch
    provider: str  # e.g. CPUExecutionProvider
    precision: str = "fp32"
    max_batch: int = 1
    route: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


_STATIC_KEYS = itertools.count(1)


@dataclass(frozen=True, eq=False)
class StaticInputs:
    """Inputs that stay the same over several calls (a chunk's VLM features over its denoising steps).

    ``Engine.bind_static`` makes one; ``Engine.run_bound`` takes it plus the changing inputs. Engines
    with device memory upload the arrays once per key and skip the copy while the same key is resident
    (TensorRT); ONNX Runtime keeps them as OrtValues bound through IO binding. ``backing`` is the
    engine's own per-handle state (OrtValues); ``key`` is unique per handle.
    """

    arrays: Mapping[str, np.ndarray]
    key: int = field(default_factory=lambda: next(_STATIC_KEYS))
    backing: Any = None


class Engine(abc.ABC):
    """One exported graph, ready to run. Implementations must be safe to call from one thread at a time
    per instance; the batcher guarantees that for shared engines."""

    info: EngineInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Hard cap on rows per call (the TensorRT optimisation profiles' max); None: any batch runs.
    batch_limit: int | None = None
    # True when the engine prepares state per batch size (TensorRT profiles, CUDA graphs, cuDNN plans):
    # the service then warms up every size of the bundle's batch list, not only batch 1.
    warms_per_batch: bool = False

    def bind_static(self, inputs: Mapping[str, np.ndarray]) -> StaticInputs:
        """Marks ``inputs`` as unchanged across the next calls of :meth:`run_bound` (default: host arrays)."""
        return StaticInputs({k: np.ascontiguousarray(v) for k, v in inputs.items()})

    def run_bound(self, static: StaticInputs, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` with ``static``'s arrays plus ``inputs`` (the default merges them on the host)."""
        return self.run({**static.arrays, **inputs})

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the graph; every declared input must be present, outputs come back by name."""

    def close(self) -> None:  # pragma: no cover - default: nothing to release
        """Releases device memory / sessions."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raises a clear error naming a missing input, rather than the backend's own message."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EngineError(f"{self.info.graph}: missing input(s) {missing}; got {sorted(inputs)}")
