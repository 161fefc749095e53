"""X-VLA export: model code (``model/``), checkpoint I/O, graphs, the manifest's ``policy`` block, parity gate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

KIND = "xvla"
MODEL_TYPES = ("xvla",)


def preset_names() -> list[str]:
    from xvla.export.policies.xvla.model.config import XVLAConfig

    return XVLAConfig.preset_names()


def export_from_args(args: argparse.Namespace, reporter: Any) -> Path:
    """``xvla-export``'s options -> a parity-gated X-VLA bundle."""
    from xvla.export.policies.xvla.bundle_writer import export_bundle, load_model, preset_model

    cameras = [c.strip() for c in args.camera_names.split(",")] if args.camera_names else None
    if args.preset is not None:
        with reporter.step(f"build preset {args.preset} (seed {args.seed})"):
            loaded = preset_model(args.preset, args.seed)
    else:
        with reporter.step(f"load checkpoint {args.checkpoint}"):
            loaded = load_model(args.checkpoint)
    return export_bundle(
        loaded, args.out, tokenizer_dir=args.tokenizer, precision=args.precision, max_batch=args.max_batch,
        opset=args.opset, parity=not args.no_parity, reporter=reporter, steps=args.steps,
        unrolled=args.unrolled, num_views=args.num_views, camera_names=cameras,
        domains=dict(args.domain) if args.domain else None, build_tokenizer=args.build_tokenizer,
        parity_seed=args.parity_seed,
        parity_providers=("CUDAExecutionProvider",) if args.parity_provider == "cuda" else ("CPUExecutionProvider",),
        cache_dir=args.cache_dir, jobs=args.jobs, trt=args.trt, trt_opt_batch=args.opt_batch,
        trt_fp32_attention=args.trt_fp32_attention,
        trt_workspace_gb=args.workspace_gb, trt_timing_cache=args.timing_cache, verbose=args.verbose)
