"""The robot install must stay light: no torch, onnxruntime, transformers, opencv or pillow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import xvla.agents

HEAVY = ("torch", "onnxruntime", "transformers", "cv2", "PIL")


def test_agents_import_nothing_heavy():
    root = Path(xvla.agents.__file__).parent
    modules = sorted(m.name for m in pkgutil.walk_packages([str(root)], prefix="xvla.agents."))
    assert {"xvla.agents.client", "xvla.agents.control_loop", "xvla.agents.cli", "xvla.agents.sim_r1pro",
            "xvla.agents.bridges.openpi_ws", "xvla.agents.bridges.zmq_bridge", "xvla.agents.bridges.http_act"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        f"heavy = [h for h in {HEAVY!r} if h in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "HEAVY []" in r.stdout
