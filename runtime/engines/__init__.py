"""Inference engines behind one small interface (see base.Engine).

Which engine runs a graph is a startup decision: a requested provider that is not
available is an error, never a silent fallback to something slower.
"""

from xvla.runtime.engines.base import Engine, EngineError, EngineInfo, ProviderUnavailableError, TensorSpec
from xvla.runtime.engines.factory import create_engine, parse_providers

__all__ = [
    "Engine",
    "EngineError",
    "EngineInfo",
    "ProviderUnavailableError",
    "TensorSpec",
    "create_engine",
    "parse_providers",
]
