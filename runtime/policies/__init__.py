"""Policy kinds, keyed by the manifest's ``policy_kind``: the registry and the loader.

Built-in kinds are imported lazily (``"xvla"`` pulls in nothing until a bundle of that kind is
loaded); a plug-in registers its own class with :func:`register`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from xvla.core.manifest import BundleError
from xvla.runtime.bundle import Bundle

if TYPE_CHECKING:
    from xvla.runtime.policies.base import PolicyRuntime

_BUILTIN: dict[str, str] = {
    "xvla": "xvla.runtime.policies.xvla.runtime:XVLAPolicy",
    "dexvla": "xvla.runtime.policies.dexvla.runtime:DexVLAPolicy",
}
_REGISTRY: dict[str, type] = {}


def register(kind: str, runtime_cls: type) -> None:
    """Makes bundles of ``kind`` loadable; ``runtime_cls`` implements PolicyRuntime."""
    _REGISTRY[kind] = runtime_cls


def known_kinds() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def runtime_class(kind: str) -> type:
    """The PolicyRuntime class for a kind; an unknown kind is a load error naming it and the known ones."""
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    target = _BUILTIN.get(kind)
    if target is None:
        raise BundleError(f"manifest.policy_kind {kind!r} is not a known policy kind (known: {known_kinds()}); "
                          "install or register the plug-in for it")
    module, name = target.split(":")
    cls = getattr(importlib.import_module(module), name)
    _REGISTRY[kind] = cls
    return cls


def load_policy(bundle_dir: str | Path, providers: Sequence[str] = ("cpu",), allow_fallback: bool = False,
                intra_op_threads: int = 0, verify: bool = True, seed: int | None = None,
                route: str = "") -> "PolicyRuntime":
    """A checked bundle with engines from the requested providers, behind its kind's PolicyRuntime."""
    from xvla.runtime.engines.factory import create_engine, is_torch, parse_providers

    bundle = Bundle.load(bundle_dir, verify_hashes=verify)
    cls = runtime_class(bundle.kind)
    flags = parse_providers(list(providers))
    if is_torch(flags):  # the kind's PyTorch reference modules: torch is imported only when asked for
        make = getattr(cls, "torch_engines", None)
        if make is None:
            raise BundleError(f"providers: {flags[0]}: policy kind {bundle.kind!r} has no PyTorch engine backend")
        engines = make(bundle, flags[0], route=route)
    else:
        engines = {g: create_engine(bundle, g, providers, allow_fallback, intra_op_threads, route=route)
                   for g in bundle.graphs}
    return cls.from_bundle(bundle, engines, seed=seed, route=route)
