"""Bench bundles: each preset exported once (seeded random weights) and reused while its config is unchanged.

The export runs in a subprocess (``python -m xvla.benchmarks.bundles``) so the exporter's
PyTorch memory is returned before anything is timed. A stamp next to the bundle records
the config hash, seed and max batch it was exported with; a mismatch re-exports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping


def config_hash(preset: str) -> str:
    from xvla.benchmarks.presets import get_preset

    cfg = get_preset(preset).config().to_dict()
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def proprio_dim(manifest: Mapping[str, Any]) -> int:
    """The proprio the robot sends: the action dim (the service also takes raw 256-d R1Pro proprio)."""
    return int(manifest["policy"]["action_space"]["dim"])


def _stamp(preset: str, seed: int, max_batch: int, precision: str, trt: bool) -> dict[str, Any]:
    return {"preset": preset, "config": config_hash(preset), "seed": seed, "max_batch": max_batch,
            "precision": precision, "trt": trt}


def bundle_name(preset: str, precision: str = "fp32", trt: bool = False) -> str:
    """``tiny`` for the plain fp32 ONNX bundle; ``tiny-trt-fp16`` for one with TensorRT plans."""
    return f"{preset}-trt-{precision}" if trt else (preset if precision == "fp32" else f"{preset}-{precision}")


def ensure_bench_bundle(preset: str, artifacts: Path, max_batch: int = 8, seed: int = 0, precision: str = "fp32",
                        trt: bool = False, timeout: float = 3600) -> Path:
    """The preset's bundle (ONNX graphs always fp32; ``precision`` + ``trt`` add TensorRT plans of that precision)."""
    artifacts = Path(artifacts).resolve()
    name = bundle_name(preset, precision, trt)
    out = artifacts / name
    stamp_path = artifacts / f"{name}.bench.json"
    want = _stamp(preset, seed, max(max_batch, 1), precision, trt)
    keys = ("preset", "config", "seed", "precision", "trt")
    if (out / "manifest.json").is_file() and stamp_path.is_file():
        have = json.loads(stamp_path.read_text())
        if {k: have.get(k) for k in keys} == {k: want[k] for k in keys} and int(have.get("max_batch", 0)) >= want["max_batch"]:
            return out
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "xvla.benchmarks.bundles", "--preset", preset, "--out", str(out), "--seed", str(seed),
           "--max-batch", str(want["max_batch"]), "--precision", precision] + (["--trt"] if trt else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"exporting the {preset} bench bundle failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    stamp_path.write_text(json.dumps(want) + "\n")
    return out


def export(preset: str, out: Path, seed: int, max_batch: int, precision: str = "fp32", trt: bool = False) -> Path:
    """Seeded preset model -> bundle through the project's exporter (parity gate on, tiny stand-in tokenizer)."""
    from xvla.benchmarks.presets import build_model
    from xvla.export.policies.xvla.bundle_writer import LoadedModel, export_bundle

    model = build_model(preset, seed=seed)
    loaded = LoadedModel(model, preset, {"kind": "preset", "preset": preset, "seed": int(seed), "by": "xvla-bench"})
    return export_bundle(loaded, out, precision=precision, max_batch=max_batch, trt=trt, build_tokenizer=True,
                         overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xvla.benchmarks.bundles", description=__doc__)
    p.add_argument("--preset", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--trt", action="store_true")
    a = p.parse_args(argv)
    export(a.preset, a.out, a.seed, a.max_batch, a.precision, a.trt)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
