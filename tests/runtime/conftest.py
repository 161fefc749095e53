"""Fixtures of the runtime tests: the tiny exported bundle (exported once per test session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The export engineer's cached tiny bundle (tests/bundles.py), or an export of the tiny preset.

    ``XVLA_TINY_BUNDLE=DIR`` reuses an already exported bundle (saves the export while iterating).
    """
    import os
    from pathlib import Path

    if os.environ.get("XVLA_TINY_BUNDLE"):
        return Path(os.environ["XVLA_TINY_BUNDLE"])
    try:
        from tests.bundles import make_tiny_bundle
    except ImportError:
        make_tiny_bundle = None
    if make_tiny_bundle is not None:
        return make_tiny_bundle(tmp_path_factory.mktemp("bundles"))
    from xvla.export.bundle_writer import export_bundle, preset_model

    return export_bundle(preset_model("tiny", seed=0), tmp_path_factory.mktemp("bundles") / "tiny", parity=False)
