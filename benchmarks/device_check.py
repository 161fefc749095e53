"""The prepared GPU device check (``benchmarks/device_check.sh``): PyTorch CUDA, seeded random weights.

On a bare GPU machine (PyTorch + CUDA, no TensorRT, no network, only the working tree), in one
command of at most 8 minutes:

1. peak bf16 matmul throughput, measured (square matmuls, CUDA events): the roofline's ceiling;
2. for ``xvla-0.9b`` and ``da3-xvla`` (models ``xvla-0.9b-r1pro`` / ``da3-xvla-r1pro``) built from
   seeded random weights on the GPU (no export, no CPU parity): the whole chunk (VLM once, geometry
   once, 10 denoising steps, decode = ``generate_actions``) in eager fp32 (TF32 off), eager bf16
   (model cast once) and bf16 + one CUDA graph of the whole chunk, at batch 1 and 8; p50/p99 from
   CUDA events, the share of the roofline (counted FLOPs / measured bf16 peak), peak GPU memory per case;
3. a closed-loop figure: simulated R1Pro robots at 30 Hz (``xvla-agent`` processes) against the real
   service (``xvla-serve --providers torch-cuda``, a torch-only bundle of ``xvla-0.9b``): how many
   robots run with zero starved ticks;
4. DexVLA at real sizes (``dexvla-2b-scaledp-h``, seeded random weights, bf16 eager) per stage:
   vision, prefill, decode per token, FiLM + diffusion, at batch 1 and 8;
5. results.json + report.md + chunk_latency.png under ``--out`` ($OUT) and ``--results`` (the
   committed ``benchmarks/results/<machine>/device_check``).

``--dry-run`` runs the same code on the tiny presets on the CPU (CUDA-graph cases report why they
are skipped) in about a minute, so the suite catches breakage. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

TARGETS = {  # issue 13: full chunk (VLM + 10 steps), bf16 + CUDA graph, H200
    "xvla-0.9b b1 p50 ms": 15.0,
    "xvla-0.9b b8 / b1": 2.5,
    "da3-xvla b1 p50 ms": 25.0,
}


@dataclass
class CheckConfig:
    presets: tuple[str, ...]
    batches: tuple[int, ...]
    modes: tuple[str, ...] = ("eager-fp32", "eager-bf16", "graph-bf16")
    warmup: int = 3
    iters: int = 30
    steps: int = 10
    device: str = "cuda"
    closed_loop_preset: str = "xvla-0.9b"
    closed_loop_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    closed_loop_seconds: float = 10.0
    closed_loop_provider: str = "torch-cuda"
    matmul_n: int = 8192
    dexvla_preset: str = "dexvla-2b-scaledp-h"  # issue 14: DexVLA at real sizes, seeded random weights
    dexvla_batches: tuple[int, ...] = (1, 8)
    dexvla_new_tokens: int = 16

    @classmethod
    def full(cls) -> "CheckConfig":
        return cls(presets=("xvla-0.9b", "da3-xvla"), batches=(1, 8))

    @classmethod
    def dry_run(cls) -> "CheckConfig":
        return cls(presets=("tiny",), batches=(1, 2), warmup=1, iters=2, device="cpu", closed_loop_preset="tiny",
                   closed_loop_sizes=(1,), closed_loop_seconds=2.0, closed_loop_provider="torch-cpu", matmul_n=256,
                   dexvla_preset="tiny-dexvla", dexvla_batches=(1, 2), dexvla_new_tokens=4)


@dataclass
class ChunkCase:
    preset: str
    mode: str
    batch: int
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    n: int = 0
    flops: Optional[int] = None
    roofline_share: Optional[float] = None
    memory_gib: Optional[float] = None
    skipped: Optional[str] = None


@dataclass
class CheckResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    peak_bf16_tflops: Optional[float] = None
    cases: list[ChunkCase] = field(default_factory=list)
    flops: dict[str, Any] = field(default_factory=dict)
    closed_loop: dict[str, Any] = field(default_factory=dict)
    dexvla: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ timing


class Timer:
    """CUDA events on a GPU (the device's own clock), perf_counter on the CPU."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch, self.cuda = torch, device == "cuda"

    def time(self, fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(float(start.elapsed_time(end)))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1000.0)
        return out


def peak_matmul_tflops(torch: Any, device: str, n: int, timer: Timer) -> float:
    """Measured bf16 matmul throughput (n x n x n, 2 n^3 FLOPs per call)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = float(np.median(timer.time(lambda: a @ b, warmup=3, iters=10)))
    return 2.0 * n ** 3 / (ms / 1000.0) / 1e12


# ------------------------------------------------------------------------------------ the chunk


def build_on_device(torch: Any, preset: str, device: str, seed: int = 0) -> Any:
    """Seeded random weights, initialised directly on the device (no CPU init of 0.9B parameters)."""
    from xvla.benchmarks.presets import get_preset
    from xvla.export.policies.xvla.model import XVLA

    torch.manual_seed(seed)
    with torch.device(device):
        model = XVLA(get_preset(preset).config()).eval()
    return model.requires_grad_(False)


def chunk_inputs(torch: Any, model: Any, batch: int, device: str, dtype: Any) -> dict[str, Any]:
    from xvla.export.policies.xvla.graphs import model_has_geometry, model_has_prompts

    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = model.config
    dm, horizon = int(model.action_space.model_dim), int(cfg.num_actions)
    t: dict[str, Any] = {
        "input_ids": torch.randint(4, 40, (batch, 50), generator=g),
        "image_input": torch.randn(batch, 3, 3, 224, 224, generator=g),
        "image_mask": torch.ones(batch, 3, dtype=torch.bool),
        "domain_id": torch.zeros(batch, dtype=torch.long),
        "proprio": torch.randn(batch, dm, generator=g),
        "noise": torch.randn(batch, horizon, dm, generator=g),
    }
    if model_has_prompts(model):
        t["task_id"] = torch.zeros(batch, dtype=torch.long)
        t["skill_id"] = torch.zeros(batch, dtype=torch.long)
    if model_has_geometry(model):
        t["extrinsics"] = torch.eye(4).expand(batch, 3, 4, 4).contiguous()
        intr = torch.eye(3).expand(batch, 3, 3, 3).contiguous().clone()
        intr[..., 0, 0] = intr[..., 1, 1] = 150.0
        intr[..., 0, 2] = intr[..., 1, 2] = 112.0
        t["intrinsics"] = intr
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in t.items()}


def chunk_call(torch: Any, model: Any, t: dict[str, Any], steps: int) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model.generate_actions(t["input_ids"], t["image_input"], t["image_mask"], t["domain_id"],
                                          t["proprio"], steps=steps, noise=t["noise"], task_id=t.get("task_id"),
                                          skill_id=t.get("skill_id"), extrinsics=t.get("extrinsics"),
                                          intrinsics=t.get("intrinsics"))
    return run


def cuda_graph_call(torch: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """One CUDA graph of the whole chunk (its inputs are the static tensors ``fn`` closes over)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def run_chunk_cases(torch: Any, cfg: CheckConfig, preset: str, flops: Optional[int], peak: Optional[float],
                    timer: Timer, progress: Callable[[str], None]) -> list[ChunkCase]:
    cuda = cfg.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    model = build_on_device(torch, preset, cfg.device)
    cases: list[ChunkCase] = []
    cast = False
    for mode in cfg.modes:
        if mode.endswith("bf16") and not cast:
            model = model.to(torch.bfloat16)  # once, for every bf16 case
            cast = True
        dtype = torch.bfloat16 if mode.endswith("bf16") else torch.float32
        for b in cfg.batches:
            case = ChunkCase(preset, mode, b)
            cases.append(case)
            progress(f"{preset} {mode} b={b}")
            if mode.startswith("graph") and not cuda:
                case.skipped = "CUDA graphs need a CUDA device (dry run on the CPU)"
                continue
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                fn = chunk_call(torch, model, chunk_inputs(torch, model, b, cfg.device, dtype), cfg.steps)
                if mode.startswith("graph"):
                    fn = cuda_graph_call(torch, fn)
                ms = timer.time(fn, cfg.warmup, cfg.iters)
                case.p50_ms = round(float(np.percentile(ms, 50)), 3)
                case.p99_ms = round(float(np.percentile(ms, 99)), 3)
                case.n = len(ms)
                if cuda:
                    case.memory_gib = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                if flops:
                    case.flops = int(flops) * b
                    if peak:
                        case.roofline_share = round(case.flops / (case.p50_ms / 1000.0) / (peak * 1e12), 4)
            except Exception as exc:  # noqa: BLE001 - one failing case (OOM, capture) must not lose the rest
                case.skipped = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    del model
    if cuda:
        torch.cuda.empty_cache()
    return cases


def run_dexvla_cases(torch: Any, cfg: CheckConfig, timer: Timer, progress: Callable[[str], None]) -> list[dict]:
    """DexVLA per stage (vision, prefill, decode per token, FiLM + diffusion), eager, bf16 on a GPU (fp32 on the
    CPU dry run), three 224x224 cameras, seeded random weights built on the device."""
    from xvla.benchmarks.dexvla_stages import measure
    from xvla.export.policies.dexvla.presets import build_seeded

    dtype = torch.bfloat16 if cfg.device == "cuda" else torch.float32
    out: list[dict] = []
    try:
        model = build_seeded(cfg.dexvla_preset, seed=0).to(device=cfg.device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the other sections still count
        return [{"preset": cfg.dexvla_preset, "skipped": f"build failed: {type(exc).__name__}: {str(exc)[:300]}"}]

    def time_ms(fn: Callable[[], object], repeats: int) -> float:
        return float(np.percentile(timer.time(fn, cfg.warmup, repeats), 50))

    for b in cfg.dexvla_batches:
        progress(f"{cfg.dexvla_preset} {str(dtype).replace('torch.', '')} b={b}")
        try:
            if cfg.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row = measure(cfg.dexvla_preset, b, 3, 224, 40, cfg.dexvla_new_tokens, cfg.iters, device=cfg.device,
                          dtype=dtype, time_ms=time_ms, model=model)
            if cfg.device == "cuda":
                row["memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            out.append(row)
        except Exception as exc:  # noqa: BLE001
            out.append({"preset": cfg.dexvla_preset, "batch": b, "skipped": f"failed: {type(exc).__name__}: {str(exc)[:300]}"})
    del model
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------ closed loop


def closed_loop(cfg: CheckConfig, scratch: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from xvla.benchmarks.closed_loop import sweep
    from xvla.benchmarks.servers import start_xvla_serve, wait_serving
    from xvla.benchmarks.torch_bundle import write_torch_only_bundle

    bundle = write_torch_only_bundle(cfg.closed_loop_preset, scratch / f"{cfg.closed_loop_preset}-torch",
                                     max_batch=max(cfg.closed_loop_sizes), steps=cfg.steps)
    progress(f"closed loop: xvla-serve --providers {cfg.closed_loop_provider} ({cfg.closed_loop_preset})")
    server = start_xvla_serve(bundle, scratch, providers=cfg.closed_loop_provider)
    try:
        wait_serving(server, timeout=300)
        out = sweep(server, cfg.closed_loop_sizes, cfg.closed_loop_seconds, refine=False, progress=progress)
    finally:
        server.stop()
    out.update(preset=cfg.closed_loop_preset, provider=cfg.closed_loop_provider, rate_hz=30.0,
               seconds_per_run=cfg.closed_loop_seconds)
    return out


# ------------------------------------------------------------------------------------ report


def targets(cases: list[ChunkCase]) -> dict[str, Any]:
    def p50(preset: str, mode: str, b: int) -> Optional[float]:
        return next((c.p50_ms for c in cases if (c.preset, c.mode, c.batch) == (preset, mode, b)), None)

    x1, x8, d1 = p50("xvla-0.9b", "graph-bf16", 1), p50("xvla-0.9b", "graph-bf16", 8), p50("da3-xvla", "graph-bf16", 1)
    got = {"xvla-0.9b b1 p50 ms": x1, "xvla-0.9b b8 / b1": round(x8 / x1, 3) if x1 and x8 else None,
           "da3-xvla b1 p50 ms": d1}
    return {k: {"target": TARGETS[k], "reached": v, "met": None if v is None else bool(v <= TARGETS[k])}
            for k, v in got.items()}


def write_report(res: CheckResult, dirs: list[Path]) -> None:
    lines = ["# Device check (issue 13)", "",
             f"Machine: {res.machine.get('name')} ({', '.join(res.machine.get('gpus') or ['no GPU'])}), "
             f"torch {res.machine.get('torch')}; {res.seconds:.0f} s in all"
             + ("; DRY RUN (tiny preset on the CPU: not a measurement)" if res.config.get("dry_run") else "") + ".",
             f"Measured bf16 matmul peak: {res.peak_bf16_tflops:.4g} TFLOP/s." if res.peak_bf16_tflops else "", "",
             "## Whole chunk (VLM + geometry + denoising steps + decode), seeded random weights", "",
             "| preset | mode | batch | p50 ms | p99 ms | n | roofline share | GPU memory GiB | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in res.cases:
        share = f"{100 * c.roofline_share:.1f}%" if c.roofline_share is not None else "-"
        lines.append(f"| {c.preset} | {c.mode} | {c.batch} | {c.p50_ms or '-'} | {c.p99_ms or '-'} | {c.n} | {share} "
                     f"| {c.memory_gib if c.memory_gib is not None else '-'} | {c.skipped or ''} |")
    lines += ["", "Roofline share = counted FLOPs of the chunk (torch FlopCounterMode) / p50 / measured bf16 peak "
              "(for every mode, fp32 included).", "", "## Targets (benchmark only, never asserted)", "",
              "| target | goal | reached | met |", "|---|---|---|---|"]
    for k, v in res.targets.items():
        lines.append(f"| {k} | <= {v['target']} | {v['reached'] if v['reached'] is not None else '-'} | "
                     f"{'-' if v['met'] is None else ('yes' if v['met'] else 'no')} |")
    lines += ["", "## DexVLA per stage (eager; seeded random weights, 3 cameras 224x224)", "",
              "| preset | batch | vision ms | prefill ms | decode ms/token | FiLM + diffusion ms | chunk estimate ms | note |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res.dexvla:
        lines.append(f"| {r.get('preset')} | {r.get('batch', '-')} | {r.get('vision_ms', '-')} | {r.get('prefill_ms', '-')} "
                     f"| {r.get('decode_per_token_ms', '-')} | {r.get('diffusion_ms', '-')} "
                     f"| {r.get('chunk_ms_estimate', '-')} | {r.get('skipped', '')} |")
    cl = res.closed_loop
    lines += ["", "## Closed loop (simulated robots at 30 Hz through xvla-serve)", ""]
    if cl.get("error"):
        lines.append(f"Not measured: {cl['error']}")
    elif cl:
        lines.append(f"{cl.get('provider')} serving {cl.get('preset')}: **{cl.get('max_robots_zero_starved')} robots "
                     f"with zero starved ticks** (sizes tried {[r.get('robots') for r in cl.get('runs', [])]}, "
                     f"{cl.get('seconds_per_run')} s each; first starved at {cl.get('first_starved_at')}).")
    text = "\n".join(lines) + "\n"
    payload = json.dumps(asdict(res), indent=2, default=str)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.md").write_text(text)
        (d / "results.json").write_text(payload)
        _plot(res, d / "chunk_latency.png")


def _plot(res: CheckResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra is missing: JSON and report still written
        return
    done = [c for c in res.cases if c.p50_ms is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(done) + 2), 3.5))
    labels = [f"{c.preset}\n{c.mode}\nb{c.batch}" for c in done]
    ax.bar(range(len(done)), [c.p50_ms for c in done], color="#4a7ab7")
    ax.errorbar(range(len(done)), [c.p50_ms for c in done],
                yerr=[[0] * len(done), [c.p99_ms - c.p50_ms for c in done]], fmt="none", ecolor="k", capsize=3)
    ax.set_xticks(range(len(done)), labels, fontsize=6)
    ax.set_ylabel("chunk ms (p50, bar to p99)")
    ax.set_title("whole chunk" + (" (dry run)" if res.config.get("dry_run") else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="issue 13 device check (PyTorch CUDA)")
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU, same code, about a minute")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-check-out")))
    ap.add_argument("--results", type=Path, default=None,
                    help="committed results folder (default benchmarks/results/<machine>/device_check; "
                         "not written by --dry-run unless given)")
    ap.add_argument("--no-closed-loop", action="store_true")
    ap.add_argument("--machine", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from xvla.benchmarks.flops import count_chunk_flops
    from xvla.benchmarks.machine import default_machine_name, gpu_names

    cfg = CheckConfig.dry_run() if args.dry_run else CheckConfig.full()
    if not args.dry_run and not torch.cuda.is_available():
        print("device_check: no CUDA device (use --dry-run on a CPU machine)")
        return 2
    gpus = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() and not args.dry_run else gpu_names()
    name = args.machine or default_machine_name(gpus, os.cpu_count() or 1)
    res = CheckResult(machine={"name": name, "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda},
                      config={**asdict(cfg), "dry_run": bool(args.dry_run)})

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    timer = Timer(torch, cfg.device)
    res.peak_bf16_tflops = float(f"{peak_matmul_tflops(torch, cfg.device, cfg.matmul_n, timer):.4g}")
    progress(f"bf16 matmul peak {res.peak_bf16_tflops} TFLOP/s")
    for preset in cfg.presets:
        try:
            res.flops[preset] = count_chunk_flops(preset, cfg.steps).to_dict()
        except Exception as exc:  # noqa: BLE001
            res.flops[preset] = {"error": f"{type(exc).__name__}: {exc}"}
        res.cases += run_chunk_cases(torch, cfg, preset, res.flops[preset].get("chunk"), res.peak_bf16_tflops,
                                     timer, progress)
    res.dexvla = run_dexvla_cases(torch, cfg, timer, progress)
    res.targets = targets(res.cases)
    if not args.no_closed_loop:
        try:
            res.closed_loop = closed_loop(cfg, args.out / "scratch", progress)
        except Exception as exc:  # noqa: BLE001 - the latency table is still worth writing
            res.closed_loop = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    res.seconds = time.perf_counter() - t0
    dirs = [args.out]
    if args.results is not None or not args.dry_run:
        dirs.append(args.results or Path(__file__).resolve().parent / "results" / name / "device_check")
    write_report(res, dirs)
    progress(f"wrote {', '.join(str(d) for d in dirs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
