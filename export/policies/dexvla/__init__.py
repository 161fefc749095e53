"""DexVLA (LeRobot community policy @ a0510c0f5): Qwen2-VL + FiLM + ScaleDP diffusion head.

Export entry points for ``xvla-export`` (``export/policies/__init__.py`` dispatches on ``MODEL_TYPES`` /
``preset_names()``); the bundle writer is ``bundle.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

KIND = "dexvla"
MODEL_TYPES = ("qwen2_vla",)


def preset_names() -> list[str]:
    from xvla.export.policies.dexvla.presets import PRESETS

    return sorted(PRESETS)


def export_from_args(args: argparse.Namespace, reporter: Any) -> Path:
    """``xvla-export``'s options -> a parity-gated DexVLA bundle."""
    from xvla.export.errors import BundleExportError
    from xvla.export.policies.dexvla.bundle import (
        DEFAULT_CAMERAS,
        DEFAULT_MAX_NEW_TOKENS,
        DexVLAExportOptions,
        default_image_size,
        export_bundle,
        load_source,
        parse_image_size,
    )

    if getattr(args, "trt", False):
        raise BundleExportError("--trt: TensorRT engines are not built for DexVLA bundles yet (ONNX Runtime only)")
    what = f"preset {args.preset} (seed {args.seed})" if args.preset is not None else f"checkpoint {args.checkpoint}"
    with reporter.step(f"load {what}"):
        src = load_source(args.checkpoint, args.preset, args.seed)
    cameras = tuple(c.strip() for c in args.camera_names.split(",")) if args.camera_names else DEFAULT_CAMERAS
    opts = DexVLAExportOptions(
        image_size=parse_image_size(getattr(args, "image_size", None), default_image_size(src.model.cfg)),
        camera_names=cameras, max_batch=args.max_batch, opset=args.opset or 20, steps=args.steps,
        max_new_tokens=getattr(args, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS,
        stats=getattr(args, "stats", None), tokenizer_dir=args.tokenizer, parity=not args.no_parity,
        parity_seed=args.parity_seed)
    return export_bundle(src, args.out, opts, reporter)
