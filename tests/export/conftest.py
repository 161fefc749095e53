"""Session-wide bundles for the export tests (each architecture is traced once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundles import export_cache_dir
from tests.conftest import conformance_root
from tests.export.helpers import golden_checkpoints, golden_export_options


@pytest.fixture(scope="session", autouse=True)
def _trace_ahead(request):
    """Start tracing every architecture the selected tests export, in worker processes, right away.

    Tracing dominates the export time and is independent per graph: queued together the
    traces keep both cores busy while the first tests run (exports then wait only for their
    own graphs). Each later export swaps its own weights into the traced graphs. Only what
    the collected tests use is traced (``-k`` / single-file runs stay cheap).
    """
    from xvla.export.policies.xvla.bundle_writer import prefetch_templates, preset_model
    from xvla.export.policies.xvla.model import XVLAConfig

    used = set()
    for item in request.session.items:
        used.update(getattr(item, "fixturenames", ()))
    cache = export_cache_dir()
    if "tiny_cli_bundle" in used:
        prefetch_templates(preset_model("tiny", 0), cache)
    if "exported" in used:
        root, names = golden_checkpoints(conformance_root())
        for name in names:
            prefetch_templates(root / name, cache, **golden_export_options(root))
    for fixture, preset in (("geo_bundle", "tiny-geo"), ("v20_bundle", "tiny-r1pro-v20")):
        if fixture in used and preset in XVLAConfig.preset_names():
            prefetch_templates(preset_model(preset, 0), cache)
    yield
    from xvla.export.policies.xvla.onnx_export import shutdown_pool

    shutdown_pool(kill=True)  # a partial run must not wait for traces it never used


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
