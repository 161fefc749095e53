"""What machine a result came from, its folder name, and the peak FLOP/s its numbers are compared to.

Peaks: a GPU's peak comes from its spec sheet (dense, no sparsity), keyed by name. A CPU's
has two numbers: the *theoretical* one (cores x clock x FLOPs per cycle from the vector
width the CPU advertises, assuming two FMA units per core) and the *measured* one (the best
sustained fp32 GEMM this machine runs through PyTorch/MKL-DNN with all its threads), which is
what a well-tuned kernel can actually reach here and is the fairer denominator on a VM.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

# Dense spec-sheet TFLOP/s per precision; "fp32" is the non-tensor-core rate.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.5, "bf16": 989.5},
    "H100": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.5, "bf16": 989.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "A6000": {"fp32": 38.7, "tf32": 77.4, "fp16": 154.8, "bf16": 154.8},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0, "bf16": 362.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2},
    "RTX 3090": {"fp32": 35.6, "tf32": 35.6, "fp16": 71.0, "bf16": 71.0},
    "A5000": {"fp32": 27.8, "tf32": 55.6, "fp16": 111.1, "bf16": 111.1},
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def cpu_ghz(model: str) -> Optional[float]:
    m = re.search(r"@\s*([0-9.]+)\s*GHz", model)
    return float(m.group(1)) if m else None


def theoretical_cpu_gflops(cores: int, ghz: Optional[float], flags: set[str]) -> Optional[dict[str, Any]]:
    """fp32 FLOPs/cycle/core = lanes x 2 (FMA) x 2 FMA units; AVX-512 16 lanes, AVX2 8, SSE 4."""
    if ghz is None:
        return None
    lanes, isa = (16, "avx512") if "avx512f" in flags else (8, "avx2") if "fma" in flags else (4, "sse")
    per_cycle = lanes * 2 * 2
    return {"gflops": cores * ghz * per_cycle, "isa": isa, "flops_per_cycle_per_core": per_cycle,
            "assumption": f"{cores} cores x {ghz} GHz x {per_cycle} fp32 FLOP/cycle ({isa}, 2 FMA units, base clock)"}


def measure_cpu_gemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """Best sustained fp32 GEMM (n x n x n) through torch with all threads: the practical peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2.0 * n ** 3 / best / 1e9, "gemm": f"{n}x{n}x{n} fp32 torch.mm, best of {repeats}",
            "threads": torch.get_num_threads()}


def gpu_peak_tflops(name: str) -> Optional[dict[str, float]]:
    upper = name.upper()
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if key.upper() in upper:
            return dict(peaks)
    return None


def gpu_names() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - torch missing or broken CUDA: fall back to nvidia-smi
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return None


@dataclass
class MachineInfo:
    name: str
    cpu: str
    cores: int
    memory_gib: float
    gpus: list[str]
    platform: str
    python: str
    versions: dict[str, Optional[str]] = field(default_factory=dict)
    cpu_theoretical: Optional[dict[str, Any]] = None
    cpu_measured: Optional[dict[str, Any]] = None
    gpu_peak_tflops: Optional[dict[str, float]] = None
    load_average: Optional[list[float]] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def peak_gflops(self, device: str, precision: str) -> tuple[Optional[float], str]:
        """The denominator for 'fraction of peak' and where it comes from."""
        if device == "cuda":
            if not self.gpu_peak_tflops:
                return None, "unknown GPU: no spec-sheet peak"
            key = precision if precision in self.gpu_peak_tflops else "fp32"
            return self.gpu_peak_tflops[key] * 1000.0, f"{self.gpus[0]} spec sheet, dense {key}"
        if self.cpu_measured:
            return float(self.cpu_measured["gflops"]), "measured fp32 GEMM (" + self.cpu_measured["gemm"] + ")"
        if self.cpu_theoretical:
            return float(self.cpu_theoretical["gflops"]), "theoretical: " + self.cpu_theoretical["assumption"]
        return None, "unknown"


def default_machine_name(gpus: list[str], cores: int) -> str:
    if gpus:
        return slug(gpus[0].replace("NVIDIA", "").strip()) or "gpu"
    return f"cpu-{cores}core"


def collect(name: Optional[str] = None, measure_gemm: bool = True) -> MachineInfo:
    import psutil

    model = cpu_model()
    cores = cpu_count()
    gpus = gpu_names()
    info = MachineInfo(
        name=name or default_machine_name(gpus, cores),
        cpu=model,
        cores=cores,
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        gpus=gpus,
        platform=platform.platform(),
        python=platform.python_version(),
        versions={m: _version(m) for m in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "grpcio", "numpy",
                                           "xvla-runtime")},
        cpu_theoretical=theoretical_cpu_gflops(cores, cpu_ghz(model), cpu_flags()),
        gpu_peak_tflops=gpu_peak_tflops(gpus[0]) if gpus else None,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    if measure_gemm:
        info.cpu_measured = measure_cpu_gemm_gflops()
    return info
