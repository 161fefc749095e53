"""Tiny exported bundles for any test folder (runtime, agents, benchmarks, export).

    from tests.bundles import make_tiny_bundle

    @pytest.fixture(scope="session")
    def tiny_bundle(tmp_path_factory):
        return make_tiny_bundle(tmp_path_factory.mktemp("bundles"))

Exports are slow (the ONNX exporter traces the model for tens of seconds), so each
(preset, seed, options) is exported once per test session and the path is reused; graphs of
an architecture already traced are reused with new weights through the exporter's template
cache (``$XVLA_EXPORT_CACHE`` if set, else a session temp folder). Every bundle passed the
exporter's parity gate (ONNX Runtime vs PyTorch, whole chunk, 1e-4).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

_BUNDLES: dict[tuple, Path] = {}
_LOCK = threading.Lock()
_CACHE_DIR: list[Path] = []


def export_cache_dir() -> Path:
    """The session's ONNX template cache (shared by every export made through this module)."""
    if not _CACHE_DIR:
        env = os.environ.get("XVLA_EXPORT_CACHE")
        if env:
            path = Path(env)
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix="xvla-export-cache-"))
            atexit.register(shutil.rmtree, path, True)
        _CACHE_DIR.append(path)
    return _CACHE_DIR[0]


def make_tiny_bundle(tmp_root: Path, preset: str = "tiny", seed: int = 0, **options: Any) -> Path:
    """Path of a bundle of a seeded ``preset`` model (exported on first use in this session).

    ``options`` are ``xvla.export.policies.xvla.bundle_writer.ExportOptions`` fields (``unrolled=True``,
    ``max_batch=4``, ...). Treat the folder as read-only: it is shared; copy it to modify it.
    """
    key = (preset, int(seed), json.dumps(options, sort_keys=True, default=str))
    with _LOCK:
        cached = _BUNDLES.get(key)
        if cached is not None and (cached / "manifest.json").is_file():
            return cached
        from xvla.export.policies.xvla.bundle_writer import export_bundle, preset_model

        name = f"{preset}-s{seed}-{len(_BUNDLES)}"
        out = Path(tmp_root) / name
        options.setdefault("cache_dir", export_cache_dir())
        path = export_bundle(preset_model(preset, seed), out, **options)
        _BUNDLES[key] = path
        return path


def make_checkpoint_bundle(tmp_root: Path, checkpoint: Path, **options: Any) -> Path:
    """Like :func:`make_tiny_bundle` for a checkpoint folder (e.g. the conformance checkpoints)."""
    key = ("checkpoint", str(Path(checkpoint).resolve()), json.dumps(options, sort_keys=True, default=str))
    with _LOCK:
        cached = _BUNDLES.get(key)
        if cached is not None and (cached / "manifest.json").is_file():
            return cached
        from xvla.export.policies.xvla.bundle_writer import export_bundle

        out = Path(tmp_root) / f"{Path(checkpoint).name}-{len(_BUNDLES)}"
        options.setdefault("cache_dir", export_cache_dir())
        path = export_bundle(checkpoint, out, **options)
        _BUNDLES[key] = path
        return path
