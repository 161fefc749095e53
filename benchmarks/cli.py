"""``xvla-bench``: latency, end-to-end, closed-loop and peer benchmarks -> JSON + markdown + PNG plots.

    xvla-bench --preset tiny --quick --out DIR          # the CI cut: well under a minute
    xvla-bench --profile cpu                            # tiny + xvla-small on this CPU -> benchmarks/results/cpu-2core/
    xvla-bench --profile h200 --serve-providers cuda    # full presets on a GPU

Sections (``--only`` / ``--skip``): flops, components, e2e, closed-loop, peers, dexvla (DexVLA per stage in
PyTorch: vision, prefill, decode per token, FiLM + diffusion; ``tiny-dexvla`` on CPU profiles, the real
``dexvla-2b-scaledp-h`` in bf16 on GPU ones). Results go to
``--out`` (default ``benchmarks/results/<machine>/``): ``results.json``, ``report.md``,
``plots/*.png``. Bundles are exported once per preset (seeded random weights) into
``--artifacts`` (default ``artifacts/bench``) and reused.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

SECTIONS = ("flops", "components", "e2e", "closed-loop", "peers", "dexvla")
# FLOPs are counted on the meta device, so every report carries every preset's count.
ALL_FLOPS_PRESETS = ("tiny", "xvla-small", "xvla-0.9b", "tiny-geo", "da3-xvla")
REPO = Path(__file__).resolve().parents[1]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xvla-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", help="cpu | a6000 | h200 (default: h200/a6000 by GPU name, else cpu)")
    p.add_argument("--preset", action="append", help="benchmark only these presets (repeatable or comma-separated)")
    p.add_argument("--quick", action="store_true", help="seconds, not minutes: 1 preset, batch 1, few samples")
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<machine>)")
    p.add_argument("--machine", help="machine name for the results folder (default cpu-<n>core or the GPU name)")
    p.add_argument("--artifacts", type=Path, default=Path(os.environ.get("XVLA_BENCH_ARTIFACTS", "artifacts/bench")),
                   help="where bench bundles are exported and cached (default artifacts/bench)")
    p.add_argument("--bundle", action="append", default=[], metavar="PRESET=DIR",
                   help="use this already exported bundle for PRESET instead of exporting one (repeatable)")
    p.add_argument("--only", type=_csv, help=f"run only these sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", type=_csv, default=(), help="skip these sections")
    p.add_argument("--backends", type=_csv, help="override the profile's backends (torch,ort-cpu,ort-cuda,ort-tensorrt,tensorrt)")
    p.add_argument("--precisions", type=_csv, help="override the profile's precisions (fp32,fp16,bf16)")
    p.add_argument("--batch-sizes", type=_ints, help="override the profile's batch sizes, e.g. 1,2,4")
    p.add_argument("--iters", type=int, help="override timed iterations per case")
    p.add_argument("--fleet-sizes", type=_ints, help="override the robots swept in the closed loop, e.g. 1,2,4")
    p.add_argument("--fleet-seconds", type=float, help="override seconds per closed-loop run")
    p.add_argument("--serve-providers", help="providers of xvla-serve and the peer servers (default: cpu, or cuda on GPU profiles)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads in the servers (0: default)")
    p.add_argument("--note", action="append", default=[], help="a note for the report (repeatable)")
    p.add_argument("--log-level", default="WARNING")
    return p


def _progress(msg: str) -> None:
    print(f"[xvla-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def resolve_profile(args: argparse.Namespace, gpus: list[str]):
    import dataclasses

    from xvla.benchmarks.profiles import get_profile

    name = args.profile
    if name is None:
        name = "cpu" if not gpus else ("h200" if any("H200" in g.upper() for g in gpus) else "a6000")
    prof = get_profile(name)
    if args.preset:
        from xvla.benchmarks.presets import get_preset

        presets = tuple(x for item in args.preset for x in _csv(item))
        for p in presets:
            get_preset(p)  # unknown names fail here, before minutes of work
        prof = prof.with_presets(presets)
    if args.quick:
        prof = prof.quick()
    overrides: dict[str, Any] = {}
    for field, attr in (("backends", "backends"), ("precisions", "precisions"), ("batch_sizes", "batch_sizes"),
                        ("iters", "iters"), ("fleet_sizes", "fleet_sizes"), ("fleet_seconds", "fleet_seconds")):
        value = getattr(args, attr)
        if value:
            overrides[field] = value
    return dataclasses.replace(prof, **overrides) if overrides else prof


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xvla.benchmarks import machine as machine_mod
    from xvla.benchmarks.bundles import ensure_bench_bundle, load_manifest

    t_start = time.monotonic()
    sections = set(args.only or SECTIONS) - set(args.skip or ())
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"xvla-bench: unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    gpus = machine_mod.gpu_names()
    prof = resolve_profile(args, gpus)
    info = machine_mod.collect(args.machine, measure_gemm=False)
    if prof.device == "cpu":
        info.cpu_measured = machine_mod.measure_cpu_gemm_gflops(n=1024 if args.quick else 2048,
                                                                repeats=3 if args.quick else 10)
    out = args.out or (REPO / "benchmarks" / "results" / info.name)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    serve_providers = args.serve_providers or ("cuda" if prof.device == "cuda" else "cpu")
    results: dict[str, Any] = {
        "schema": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "xvla-bench " + " ".join(shlex.quote(a) for a in (args.argv or [])),
        "profile": prof.to_dict(), "machine": info.to_dict(), "sections": sorted(sections),
        "serve_providers": serve_providers, "flops": {}, "components": [], "e2e": {}, "closed_loop": {},
        "peers": {}, "dexvla": [], "notes": list(args.note), "section_seconds": {},
    }
    if prof.device == "cuda" and not gpus:
        dropped = sorted(sections - {"flops"})
        sections &= {"flops"}
        results["sections"] = sorted(sections)
        results["notes"].append(f"profile {prof.name} needs a GPU and none is visible: only FLOPs were counted; "
                                f"{', '.join(dropped) or 'nothing else'} not run, no GPU numbers were produced")

    def timed(name: str, fn):
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            results["section_seconds"][name] = round(results["section_seconds"].get(name, 0.0)
                                                     + time.monotonic() - t0, 1)

    _progress(f"profile {prof.name}: presets {', '.join(prof.presets)}; sections {', '.join(sorted(sections))}")
    flops_per_preset: dict[str, dict] = {}
    if "flops" in sections or "components" in sections:
        from xvla.benchmarks.flops import count_all

        names = list(prof.presets) + ([p for p in ALL_FLOPS_PRESETS if p not in prof.presets] if not args.quick else [])
        _progress(f"counting FLOPs: {', '.join(names)}")
        flops_per_preset = timed("flops", lambda: count_all(names, prof.steps))
        from xvla.benchmarks.profiles import expected_memory_gib

        for f in flops_per_preset.values():
            if "params" in f:
                f["expected_memory_gib"] = {p: round(expected_memory_gib(f["params"], p, max(prof.batch_sizes)), 2)
                                            for p in prof.precisions}
                f["expected_memory_batch"] = max(prof.batch_sizes)
        if "flops" in sections:
            results["flops"] = flops_per_preset

    given = dict(_bundle_arg(b) for b in args.bundle)
    bundles: dict[str, Path] = {}
    trt_bundles: dict[str, dict[str, Path]] = {}
    trt_missing: dict[str, dict[str, str]] = {}
    needs_bundle = sections & {"components", "e2e", "closed-loop", "peers"}
    for preset in prof.presets:
        if not needs_bundle:
            break
        if preset in given:
            bundles[preset] = given[preset]
            continue
        _progress(f"bundle for {preset} (exported once, cached in {args.artifacts})")
        try:
            bundles[preset] = timed("export", lambda: ensure_bench_bundle(preset, args.artifacts,
                                                                          max_batch=max(prof.batch_sizes)))
        except Exception as exc:  # noqa: BLE001 - a preset that cannot be exported here is reported
            results["notes"].append(f"{preset}: no bundle ({type(exc).__name__}: {exc}); its cases were not run")
            continue
        if "components" in sections and "tensorrt" in prof.backends and prof.device == "cuda":
            trt_bundles[preset], trt_missing[preset] = export_trt_bundles(preset, prof, args.artifacts, timed)

    if "components" in sections:
        from xvla.benchmarks.components import ComponentConfig, run_components

        for preset, bundle in bundles.items():
            manifest = load_manifest(bundle)
            cfg = ComponentConfig(preset=preset, bundle_dir=bundle, backends=prof.backends, precisions=prof.precisions,
                                  batch_sizes=prof.batch_sizes, warmup=prof.warmup, iters=prof.iters, steps=prof.steps,
                                  device=prof.device, max_seconds_per_case=prof.max_seconds_per_case,
                                  trt_bundles=trt_bundles.get(preset, {}), trt_missing=trt_missing.get(preset, {}))
            fl = flops_per_preset.get(preset, {})
            per_stage = None if not fl or "error" in fl else {
                "vlm": fl["vlm"], "geometry": fl["geometry"], "action_step": fl["action_step"],
                "chunk": fl["vlm"] + fl["geometry"] + prof.steps * fl["action_step"]}
            cases = timed("components", lambda: run_components(cfg, manifest, per_stage, info.peak_gflops, _progress))
            results["components"] += [c.to_dict() for c in cases]

    if sections & {"e2e", "closed-loop", "peers"}:
        run_served(results, prof, bundles, sections, serve_providers, args.threads, logs, timed)

    if "dexvla" in sections:
        results["dexvla"] = timed("dexvla", lambda: run_dexvla(prof, quick=bool(args.quick)))

    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    write_outputs(results, out)
    _progress(f"done in {results['elapsed_s']:.0f} s: {out / 'report.md'}")
    return results


def run_dexvla(prof, quick: bool) -> list[dict[str, Any]]:
    """DexVLA chunk latency per stage (issue 14) on this profile's device, batch 1 (and 8 on a GPU)."""
    import torch

    from xvla.benchmarks.dexvla_stages import measure

    cuda = prof.device == "cuda" and torch.cuda.is_available()
    name = "dexvla-2b-scaledp-h" if cuda else "tiny-dexvla"
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    for batch in (1,) if quick or not cuda else (1, 8):
        _progress(f"dexvla {name} batch {batch}")
        try:
            rows.append(measure(name, batch, 3, 224, 40, 4 if quick else 16, 3 if quick else 20,
                                device="cuda" if cuda else "cpu", dtype=dtype))
        except Exception as exc:  # noqa: BLE001 - a failed section is reported, not fatal
            rows.append({"preset": name, "batch": batch, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return rows


def _bundle_arg(text: str) -> tuple[str, Path]:
    preset, sep, path = text.partition("=")
    if not sep or not preset or not path:
        raise SystemExit(f"xvla-bench: --bundle expects PRESET=DIR, got {text!r}")
    if not (Path(path) / "manifest.json").is_file():
        raise SystemExit(f"xvla-bench: --bundle {preset}={path}: no manifest.json there")
    return preset, Path(path).resolve()


def export_trt_bundles(preset: str, prof, artifacts: Path, timed) -> tuple[dict[str, Path], dict[str, str]]:
    """Bundles with native TensorRT plans, one per precision (built on this GPU); reasons for the missing ones."""
    import importlib.util

    from xvla.benchmarks.bundles import ensure_bench_bundle

    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    if importlib.util.find_spec("tensorrt") is None:
        return found, {p: "tensorrt: the tensorrt Python package is not installed" for p in prof.precisions}
    for precision in prof.precisions:
        _progress(f"TensorRT plans for {preset} ({precision})")
        try:
            found[precision] = timed("export", lambda: ensure_bench_bundle(
                preset, artifacts, max_batch=max(prof.batch_sizes), precision=precision, trt=True))
        except Exception as exc:  # noqa: BLE001
            missing[precision] = f"tensorrt: building {precision} plans failed: {type(exc).__name__}: {str(exc)[-300:]}"
    return found, missing


def run_served(results: dict[str, Any], prof, bundles: dict[str, Path], sections: set[str], providers: str,
               threads: int, logs: Path, timed) -> None:
    """e2e, closed loop and peers: one xvla-serve per preset, in its own process."""
    from xvla.benchmarks.bundles import load_manifest, proprio_dim
    from xvla.benchmarks.servers import start_xvla_serve, wait_serving

    wanted = set()
    if "e2e" in sections:
        wanted |= set(prof.presets)
    if "closed-loop" in sections:
        wanted |= set(prof.fleet_presets)
    if "peers" in sections:
        wanted |= set(prof.comparison_presets)
    for preset in [p for p in prof.presets if p in wanted] + [p for p in wanted if p not in prof.presets]:
        bundle = bundles.get(preset)
        if bundle is None:
            continue
        dim = proprio_dim(load_manifest(bundle))
        _progress(f"{preset}: starting xvla-serve ({providers})")
        try:
            server = wait_serving(start_xvla_serve(bundle, logs, providers=providers, threads=threads))
        except Exception as exc:  # noqa: BLE001
            results["notes"].append(f"{preset}: xvla-serve did not start: {exc}")
            continue
        try:
            if "e2e" in sections and preset in prof.presets:
                from xvla.benchmarks.e2e import run_e2e

                _progress(f"{preset}: end to end (Infer x{prof.infer_requests}, Stream x{prof.stream_ticks} at 30 Hz)")
                try:
                    results["e2e"][preset] = timed("e2e", lambda: run_e2e(
                        preset, server.target, dim, prof.infer_requests, prof.stream_ticks,
                        metrics=server.metrics_text).to_dict())
                except Exception as exc:  # noqa: BLE001
                    logging.exception("end to end failed")
                    results["e2e"][preset] = {"error": f"{type(exc).__name__}: {exc}"}
            if "peers" in sections and preset in prof.comparison_presets:
                from xvla.benchmarks.peers.compare import run_comparison

                tick = ((results["e2e"].get(preset) or {}).get("stream") or {}).get("tick_ms_by_source", {}).get("QUEUE")
                try:
                    results["peers"][preset] = timed("peers", lambda: run_comparison(
                        bundle, server.target, dim, prof.peer_requests, logs, stream_row=tick, progress=_progress,
                        providers=providers, threads=threads))
                except Exception as exc:  # noqa: BLE001
                    logging.exception("peer comparison failed")
                    results["peers"][preset] = {"error": f"{type(exc).__name__}: {exc}"}
            if "closed-loop" in sections and preset in prof.fleet_presets:
                from xvla.benchmarks.closed_loop import sweep

                try:
                    results["closed_loop"][preset] = timed("closed-loop", lambda: sweep(
                        server, prof.fleet_sizes, prof.fleet_seconds, prof.fleet_refine, _progress))
                except Exception as exc:  # noqa: BLE001
                    logging.exception("closed loop failed")
                    results["closed_loop"][preset] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            server.stop()


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from xvla.benchmarks.plots import write_plots
    from xvla.benchmarks.report import render

    plots = write_plots(results, out / "plots")
    results["plots"] = [p.name for p in plots]
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "report.md").write_text(render(results))


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(args)
    except KeyError as exc:  # unknown profile / preset: a clear message, not a traceback
        print(f"xvla-bench: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
