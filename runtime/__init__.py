"""Serving world: bundles, engines, preprocessing, policy, sessions, gRPC server. Never imports torch on the serving path.

``from xvla.runtime import Policy`` is the offline API (docs/serving.md); it is resolved lazily so
that importing a submodule (e.g. the flow-matching loop) stays cheap.
"""

from typing import Any

__all__ = ["Policy", "Observation"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from xvla.runtime import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'xvla.runtime' has no attribute {name!r}")
