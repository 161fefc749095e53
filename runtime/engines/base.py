"""The one interface every engine implements: named numpy arrays in, named numpy arrays out.

Keeping it this small is what lets the batcher, the fake engines of the tests and the
native TensorRT engine stand in for each other without the policy noticing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping

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


class Engine(abc.ABC):
    """One exported graph, ready to run. Implementations must be safe to call from one thread at a time
    per instance; the batcher guarantees that for shared engines."""

    info: EngineInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

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
