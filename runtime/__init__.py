"""Serving world: bundles, engines, policy kinds, sessions, gRPC server. Never imports torch on the serving path.

``from xvla.runtime import Policy`` is the offline API (docs/serving.md): ``Policy.load(bundle_dir)``
returns the bundle's policy kind (``XVLAPolicy`` for X-VLA bundles). Resolved lazily so that importing
a submodule stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Policy", "Observation", "load_policy"]


class Policy:
    """``Policy.load(bundle_dir, providers=[...])``: any bundle, behind its kind's PolicyRuntime."""

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        from xvla.runtime.policies import load_policy

        return load_policy(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Observation":
        from xvla.runtime.policies.xvla.runtime import Observation

        return Observation
    if name == "load_policy":
        from xvla.runtime.policies import load_policy

        return load_policy
    raise AttributeError(f"module 'xvla.runtime' has no attribute {name!r}")
