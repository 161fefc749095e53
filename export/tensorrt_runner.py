"""Runs freshly built TensorRT plans for the export's parity gate, with torch CUDA tensors as buffers.

The export side has torch (and so a CUDA allocator and the device's name); the serving runtime
runs the same plans with its own engine (runtime/engines/tensorrt_engine.py, pinned host buffers,
no torch). Keeping this small runner here is what lets ``export/`` never import ``runtime/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def gpu_properties() -> dict[str, str] | None:
    """GPU name and compute capability of device 0 as TensorRT plans record them, or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


class TrtPlanRunner:
    """One deserialized plan: numpy in, numpy out (the parity gate's call shape)."""

    def __init__(self, trt: Any, plan: Path) -> None:
        import torch

        self._torch = torch
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not deserialize the plan")
        self._context = self._engine.create_execution_context()
        self._names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt, ctx = self._torch, self._trt, self._context
        keep: dict[str, Any] = {}
        for name in self._names:
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                t = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype)).cuda()
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
                keep[name] = t
        outputs: dict[str, Any] = {}
        for name in self._names:
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=getattr(torch, dtype.name), device="cuda")
                ctx.set_tensor_address(name, t.data_ptr())
                outputs[name] = t
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}


class TrtRunner:
    """The parity gate's view of a bundle's engines: graph name -> plan runner."""

    def __init__(self, trt: Any, bundle: Path, engines: Mapping[str, str]) -> None:
        self.engines = {g: TrtPlanRunner(trt, Path(bundle) / f) for g, f in engines.items()}

    def __call__(self, name: str, feeds: Mapping[str, Any]) -> dict:
        return self.engines[name](dict(feeds))

    def close(self) -> None:
        self.engines.clear()
