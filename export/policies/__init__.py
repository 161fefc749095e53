"""Export per policy kind: which kind a checkpoint or preset is, and that kind's exporter.

Each kind lives in ``export/policies/<kind>/`` (model code, graphs, its manifest block) and exposes
``KIND``, ``MODEL_TYPES`` (the ``config.json`` ``model_type`` values it reads), ``preset_names()``
and ``export_from_args(args, reporter) -> Path``. ``xvla-export`` only dispatches.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

# kind -> module; imported only when that kind is exported
KINDS: dict[str, str] = {
    "xvla": "xvla.export.policies.xvla",
    "dexvla": "xvla.export.policies.dexvla",
}


def kind_module(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise KeyError(f"unknown policy kind {kind!r}; known: {sorted(KINDS)}")
    return importlib.import_module(KINDS[kind])


def kind_for_checkpoint(path: Path) -> str:
    """The kind whose ``MODEL_TYPES`` include the checkpoint's ``config.json`` ``model_type``."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path} is not a folder (a checkpoint is a folder with config.json + weights)")
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: not a Hugging Face checkpoint folder")
    model_type = json.loads(cfg.read_text()).get("model_type")
    for kind in KINDS:
        if model_type in kind_module(kind).MODEL_TYPES:
            return kind
    known = {k: list(kind_module(k).MODEL_TYPES) for k in KINDS}
    raise ValueError(f"{cfg}: model_type {model_type!r} is not a known policy kind (known model types: {known})")


def kind_for_preset(name: str) -> str | None:
    for kind in KINDS:
        if name in kind_module(kind).preset_names():
            return kind
    return None


def all_preset_names() -> list[str]:
    return sorted(n for kind in KINDS for n in kind_module(kind).preset_names())
