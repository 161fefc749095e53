"""``xvla-export``: a policy checkpoint (or a seeded preset) -> a bundle the runtime serves.

The checkpoint's ``config.json`` ``model_type`` (or the preset's name) picks the policy kind;
the kind's exporter (``export/policies/<kind>/``) does the work.

    xvla-export CHECKPOINT_DIR -o BUNDLE_DIR [--trt] [--precision fp32|fp16|bf16] [--max-batch N]
                [--opset N] [--steps N] [--unrolled] [--tokenizer DIR] ...
    xvla-export --preset tiny|tiny-geo|xvla-0.9b|da3-xvla|... [--seed S] -o BUNDLE_DIR

Exit codes: 0 bundle written; 1 the parity gate failed (numbers printed) or the export broke;
2 bad usage, or ``--trt`` without TensorRT (one line saying how to install it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _preset_names() -> list[str]:
    from xvla.export.policies import all_preset_names

    return all_preset_names()


def _domain(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--domain expects NAME=ID (e.g. r1pro=19), got {text!r}")
    return name, int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xvla-export",
        description="Export an X-VLA checkpoint to a bundle: ONNX graphs (vlm, [geometry], action), tokenizer, "
                    "manifest.json, optional TensorRT engines; a parity gate checks the engines against PyTorch.")
    src = p.add_argument_group("source (one of)")
    src.add_argument("checkpoint", nargs="?", type=Path, metavar="CHECKPOINT_DIR",
                     help="folder with config.json + model.safetensors (official X-VLA layout)")
    src.add_argument("--preset", metavar="NAME",
                     help="a seeded random model of a named preset instead of a checkpoint (tiny, tiny-geo, ...)")
    src.add_argument("--seed", type=int, default=0, help="seed of the --preset weights (default 0)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="BUNDLE_DIR", help="bundle folder to write")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="engine precision for TensorRT/GPU providers (ONNX graphs stay fp32; default fp32)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the engines serve (default 8)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20; >= 23 emits one Attention node)")
    p.add_argument("--steps", type=int, default=10, help="default denoising steps, used by the parity gate (10)")
    p.add_argument("--unrolled", action="store_true",
                   help="also export the 'chunk' graph: the whole denoising loop unrolled for --steps steps")
    p.add_argument("--num-views", type=int, default=3, help="camera views the graphs take (default 3)")
    p.add_argument("--camera-names", default=None,
                   help="comma-separated camera names in model view order (default head,left_wrist,right_wrist)")
    p.add_argument("--domain", type=_domain, action="append", default=None, metavar="NAME=ID",
                   help="named embodiment/domain ids for the manifest (repeatable)")
    p.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                   help="tokenizer folder (vocab.json + merges.txt) when the checkpoint ships none")
    p.add_argument("--build-tokenizer", action="store_true",
                   help="without a tokenizer: include the tiny stand-in BPE (tests/demos only)")
    dex = p.add_argument_group("DexVLA")
    dex.add_argument("--stats", type=Path, default=None, metavar="JSON",
                     help="dataset stats (state_mean, state_std, action_min, action_max); default: the "
                          "checkpoint's dataset_stats.json, else identity")
    dex.add_argument("--max-new-tokens", type=int, default=None,
                     help="default bound on the generated reasoning tokens per chunk (32)")
    dex.add_argument("--image-size", default=None, metavar="HxW",
                     help="camera size the vision graph is exported for (tiny 56x84, else 240x320)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity gate (not recommended)")
    p.add_argument("--parity-seed", type=int, default=0, help="seed of the parity inputs and noise (0)")
    p.add_argument("--parity-provider", choices=("cpu", "cuda"), default="cpu",
                   help="ONNX Runtime provider for the parity gate (default cpu)")
    p.add_argument("--cache-dir", type=Path, default=os.environ.get("XVLA_EXPORT_CACHE") or None,
                   help="reuse graphs of an architecture exported before, swapping in the new weights "
                        "(env XVLA_EXPORT_CACHE)")
    p.add_argument("--jobs", type=int, default=None,
                   help="graphs traced in parallel processes (default: one per graph, up to the CPU count)")
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--trt", action="store_true", help="also build TensorRT engines (needs TensorRT and a GPU)")
    trt.add_argument("--opt-batch", type=int, default=None,
                     help="batch TensorRT optimises its bucket for (default: each bucket's top, 1/4/8/16/..)")
    trt.add_argument("--trt-fp32-attention", action="store_true",
                     help="keep q.k^T and Softmax in fp32 (no fused attention; for fp16 graphs whose scores overflow)")
    trt.add_argument("--workspace-gb", type=float, default=8.0, help="TensorRT builder workspace (GiB, 8)")
    trt.add_argument("--timing-cache", type=Path, default=None,
                     help="TensorRT timing cache file (default BUNDLE_DIR/engines/timing.cache)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("-v", "--verbose", action="store_true", help="show the exporters' own output")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if (args.checkpoint is None) == (args.preset is None):
        parser.print_usage(sys.stderr)
        print("xvla-export: error: give exactly one of CHECKPOINT_DIR or --preset NAME", file=sys.stderr)
        return EXIT_USAGE
    if args.trt:
        from xvla.export.tensorrt_build import TensorRTUnavailable, require_tensorrt

        try:
            require_tensorrt()
        except TensorRTUnavailable as exc:
            print(f"xvla-export: {exc}", file=sys.stderr)
            return EXIT_USAGE

    from xvla.export.errors import BundleExportError, ParityError
    from xvla.export.policies import kind_for_checkpoint, kind_for_preset, kind_module
    from xvla.export.progress import Reporter, RichReporter
    from xvla.export.tensorrt_build import TensorRTUnavailable

    reporter = Reporter() if args.quiet else RichReporter()
    try:
        if args.preset is not None:
            kind = kind_for_preset(args.preset)
            if kind is None:
                print(f"xvla-export: error: unknown preset {args.preset!r}; known: {', '.join(_preset_names())}",
                      file=sys.stderr)
                return EXIT_USAGE
        else:
            kind = kind_for_checkpoint(args.checkpoint)
        bundle = kind_module(kind).export_from_args(args, reporter)
    except ParityError as exc:
        print(f"xvla-export: {exc}", file=sys.stderr)
        print(f"xvla-export: no bundle written; the graphs and parity_report.json are in {args.out}.failed",
              file=sys.stderr)
        return EXIT_FAILED
    except TensorRTUnavailable as exc:
        print(f"xvla-export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BundleExportError, FileNotFoundError, ValueError) as exc:
        print(f"xvla-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - one readable line, the traceback with -v
        if args.verbose:
            raise
        print(f"xvla-export: export failed: {type(exc).__name__}: {exc} (re-run with -v for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED
    if args.quiet:
        print(bundle)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
