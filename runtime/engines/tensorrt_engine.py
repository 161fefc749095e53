"""Native TensorRT engine (a serialized ``engines/<graph>.plan`` from the bundle).

TensorRT and the CUDA runtime bindings are imported lazily: the serving path must start on
machines without them, and a missing install must say what to install instead of failing
with an ImportError deep inside a request. Device buffers are allocated once per input
name and grown when a larger batch arrives, so the steady state does no allocation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xvla.runtime.engines.base import Engine, EngineError, EngineInfo, ProviderUnavailableError, TensorSpec

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "native TensorRT needs the 'tensorrt' and 'cuda-python' packages on a machine with an NVIDIA GPU: "
    "pip install tensorrt cuda-python (the TensorRT version must equal the one the bundle's engines were built with)"
)


def import_tensorrt() -> tuple[Any, Any]:
    """Returns (tensorrt, cudart) or raises ProviderUnavailableError with an install hint."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ProviderUnavailableError(f"tensorrt is not installed ({exc}); {INSTALL_HINT}") from exc
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]  # older cuda-python
        except ImportError as exc:
            raise ProviderUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    return trt, cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, value...) tuples; turn a non-zero err into an EngineError."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTEngine(Engine):
    """Runs one TensorRT plan with dynamic shapes on its own CUDA stream."""

    def __init__(self, plan_path: str | Path, graph: str, max_batch: int = 1, precision: str = "fp16", route: str = "") -> None:
        trt, cudart = import_tensorrt()
        self._trt, self._cudart = trt, cudart
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise EngineError(f"{graph}: TensorRT plan not found: {plan_path}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"{graph}: TensorRT {trt.__version__} could not deserialize {plan_path.name} "
                "(built with another TensorRT version or for another GPU?)"
            )
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.inputs, self.outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            spec = TensorSpec(
                name,
                np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name,
                tuple(int(d) if d >= 0 else "dyn" for d in self._engine.get_tensor_shape(name)),
            )
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
            else:
                self.outputs.append(spec)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity bytes)
        self.info = EngineInfo(graph=graph, backend="tensorrt", provider=f"TensorRT {trt.__version__}",
                               precision=precision, max_batch=max_batch, route=route)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []
        for spec in self.inputs:
            arr = np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
            hosts.append(arr)  # keep alive until the copy is done
            if not self._context.set_input_shape(spec.name, arr.shape):
                raise EngineError(f"{self.info.graph}: input {spec.name} shape {arr.shape} outside the engine's profile")
            ptr = self._device(spec.name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream), "memcpy H2D")
            self._context.set_tensor_address(spec.name, ptr)
        results: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            out = np.empty(shape, dtype=spec.dtype)
            self._context.set_tensor_address(spec.name, self._device(spec.name, out.nbytes))
            results[spec.name] = out
        if not self._context.execute_async_v3(self._stream):
            raise EngineError(f"{self.info.graph}: TensorRT execution failed")
        for spec in self.outputs:
            out = results[spec.name]
            ptr, _ = self._buffers[spec.name]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream), "memcpy D2H")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return results

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


def local_gpu_name() -> str | None:
    """Name of CUDA device 0 (e.g. 'NVIDIA H200'), or None without a usable GPU/cuda-python."""
    try:
        _, cudart = import_tensorrt()
        props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name
        return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")
    except Exception:  # no GPU, no driver, no bindings: the caller reports what it needs
        return None
