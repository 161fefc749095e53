"""The embedded default bundle that ``xvla-serve`` (no --bundle) and ``xvla-demo`` serve, exported once and cached.

Exporting needs torch, which the serving process must not import: the export runs as a
subprocess (``python -m xvla.export.cli --preset tiny --out DIR``), so this is the only place
the serving side depends on the export extra, and only the first time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from xvla.runtime.bundle import Bundle, BundleError

log = logging.getLogger(__name__)

DEFAULT_ARTIFACTS = Path(os.environ.get("XVLA_ARTIFACTS", "artifacts"))
# The one embedded default (``xvla-serve`` without a bundle, ``xvla-demo``): a seeded tiny R1Pro
# BEHAVIOR-style model (23-d actions, task + skill prompts, skill classifier, progress head), so it
# fits the simulated R1Pro of ``xvla-agent run`` and the BEHAVIOR bridges.
DEFAULT_PRESET = "tiny-r1pro-v20"


def ensure_bundle(preset: str = DEFAULT_PRESET, artifacts: str | Path = DEFAULT_ARTIFACTS, seed: int = 0) -> Path:
    """``artifacts/<preset>`` as a checked bundle, exporting it first if it is missing or fails its checks."""
    out = Path(artifacts).resolve() / preset
    if (out / "manifest.json").is_file():
        try:
            Bundle.load(out)
            return out
        except BundleError as exc:
            log.warning("cached bundle %s is unusable (%s): exporting again", out, exc)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "xvla.export.cli", "--preset", preset, "--out", str(out), "--seed", str(seed)]
    log.info("exporting the %s bundle (one time): %s", preset, " ".join(cmd))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"exporting the {preset} bundle failed (exit {proc.returncode}); needs the export extra "
            f"(pip install -e '.[export]'):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    Bundle.load(out)
    return out
