"""Session-wide bundles for the export tests (each architecture is traced once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundles import export_cache_dir


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
