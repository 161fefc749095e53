"""ONNX Runtime engine with the execution provider chosen by flag (cpu, cuda, tensorrt).

ONNX Runtime itself falls back to the CPU provider, with only a log line, when CUDA or
TensorRT libraries fail to load. A robot served 20x slower than planned is worse than a
service that refuses to start, so we check which providers the session really got and
raise unless the caller explicitly allowed the fallback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xvla.runtime.engines.base import Engine, EngineError, EngineInfo, ProviderUnavailableError, TensorSpec

log = logging.getLogger(__name__)

# Short flag name -> ONNX Runtime provider name.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
}


def provider_name(flag: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; full provider names pass through."""
    if flag in PROVIDERS:
        return PROVIDERS[flag]
    if flag in PROVIDERS.values():
        return flag
    raise EngineError(f"unknown provider {flag!r}; choose from {sorted(PROVIDERS)}")


def _provider_options(name: str, cache_dir: Path | None, fp16: bool) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        opts: dict[str, Any] = {"trt_fp16_enable": fp16}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        return opts
    return {}


class OnnxRuntimeEngine(Engine):
    """One ONNX graph in an InferenceSession."""

    def __init__(
        self,
        path: str | Path,
        graph: str,
        providers: Sequence[str] = ("cpu",),
        allow_fallback: bool = False,
        intra_op_threads: int = 0,
        max_batch: int = 1,
        precision: str = "fp32",
        trt_cache_dir: Path | None = None,
        route: str = "",
        spin: bool = False,
    ) -> None:
        import onnxruntime as ort  # serve extra; never torch

        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{graph}: graph file not found: {path}")
        wanted = [provider_name(p) for p in providers] or ["CPUExecutionProvider"]
        available = set(ort.get_available_providers())
        usable = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if missing and not allow_fallback:
            raise ProviderUnavailableError(
                f"{graph}: execution provider(s) {missing} requested but this onnxruntime "
                f"({ort.__version__}) only has {sorted(available)}. Install onnxruntime-gpu for CUDA/TensorRT, "
                "or pass allow_fallback=True (--allow-fallback) to accept the remaining providers."
            )
        if not usable:
            usable = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not intra_op_threads and usable[0] == "CPUExecutionProvider":
            # leave one core to the event loop that answers robots from the queue
            intra_op_threads = max(1, (os.cpu_count() or 2) - 1)
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        # ORT's worker threads busy-wait between ops by default: fine on a dedicated inference box,
        # but on a shared CPU it starves the event loop that answers robots from the queue.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        provider_list = [(p, _provider_options(p, trt_cache_dir, precision == "fp16")) for p in usable]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=provider_list)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"{graph}: onnxruntime could not load {path.name}: {exc}") from exc
        got = self._session.get_providers()
        if got[0] != usable[0] and not allow_fallback:
            # The provider was installed but could not initialise (missing CUDA/cuDNN libraries, no GPU).
            raise ProviderUnavailableError(
                f"{graph}: requested {usable[0]} but onnxruntime initialised {got} (check the CUDA/cuDNN/TensorRT "
                "libraries and the GPU); pass allow_fallback=True to accept that."
            )
        if got[0] != wanted[0]:
            log.warning("engine %s: fell back from %s to %s (allow_fallback)", graph, wanted[0], got[0])
        self.inputs = [
            TensorSpec(i.name, _ORT_TYPES.get(i.type, i.type), tuple(i.shape)) for i in self._session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, _ORT_TYPES.get(o.type, o.type), tuple(o.shape)) for o in self._session.get_outputs()
        ]
        self._output_names = [o.name for o in self.outputs]
        self.info = EngineInfo(
            graph=graph, backend="onnxruntime", provider=got[0], precision=precision, max_batch=max_batch, route=route
        )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feeds = {s.name: np.ascontiguousarray(inputs[s.name], dtype=s.dtype) for s in self.inputs}
        try:
            values = self._session.run(self._output_names, feeds)
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise EngineError(f"{self.info.graph}: onnxruntime run failed for inputs {shapes}: {exc}") from exc
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
