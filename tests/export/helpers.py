"""Shared by the export tests and their session set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tests.conformance.xvla_goldens import checkpoint_names, load_set, xvla_root


def golden_export_options(root: Path) -> dict[str, Any]:
    """Export options shaped like the golden inputs (views, image size, text length, batch)."""
    inputs = load_set(root).inputs
    _, views, _, h, w = inputs["image_input"].shape
    return dict(num_views=int(views), image_size=(int(h), int(w)), max_text_len=int(inputs["input_ids"].shape[1]),
                parity_batch=int(inputs["input_ids"].shape[0]))


def golden_checkpoints(conformance: Path) -> tuple[Optional[Path], list[str]]:
    root = xvla_root(conformance) if conformance.is_dir() else None
    return root, checkpoint_names(root)
