"""Session-wide bundles for the export tests (each architecture is traced once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundles import export_cache_dir
from tests.conftest import conformance_root
from tests.export.helpers import golden_checkpoints, golden_export_options


@pytest.fixture(scope="session", autouse=True)
def _trace_ahead():
    """Start tracing every architecture these tests export, in worker processes, right away.

    Tracing dominates the export time and is independent per graph: queued together the
    traces keep both cores busy while the first tests run (exports then wait only for their
    own graphs). Each later export swaps its own weights into the traced graphs.
    """
    from xvla.export.bundle_writer import prefetch_templates, preset_model
    from xvla.export.model import XVLAConfig

    cache = export_cache_dir()
    prefetch_templates(preset_model("tiny", 0), cache)
    root, names = golden_checkpoints(conformance_root())
    for name in names:
        prefetch_templates(root / name, cache, **golden_export_options(root))
    for preset in ("tiny-geo", "tiny-r1pro-v20"):
        if preset in XVLAConfig.preset_names():
            prefetch_templates(preset_model(preset, 0), cache)
    yield
    from xvla.export.onnx_export import shutdown_pool

    shutdown_pool(kill=True)  # a partial run (-k, one file) must not wait for traces it never used


@pytest.fixture(scope="session")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def tiny_cli_bundle(export_root) -> Path:
    """``xvla-export --preset tiny`` through the console-script entry point (in-process)."""
    from xvla.export.cli import main

    out = export_root / "tiny-cli"
    code = main(["--preset", "tiny", "-o", str(out), "--cache-dir", str(export_cache_dir()), "-q"])
    assert code == 0, f"xvla-export --preset tiny exited with {code}"
    return out
