"""Native TensorRT engine (a serialized ``engines/<graph>.plan`` from the bundle).

TensorRT and the CUDA runtime bindings are imported lazily: the serving path must start on
machines without them, and a missing install must say what to install instead of failing
with an ImportError deep inside a request. Device and pinned host buffers are allocated once,
at load, for the largest batch: serving never calls cudaMalloc.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xvla.runtime.engines.base import (
    Engine,
    EngineError,
    EngineInfo,
    ProviderUnavailableError,
    StaticInputs,
    TensorSpec,
)

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
    """Runs one TensorRT plan with dynamic batch on its own CUDA stream.

    Serving does no allocation: at load, every input and output gets a device buffer and a pinned
    (page-locked) host buffer sized for ``max_batch`` rows (clamped, with a warning, to the plan's
    largest optimisation profile). A call copies into the pinned buffer, uploads asynchronously, picks
    the smallest optimisation profile that holds its batch, runs, and downloads. Inputs bound with
    :meth:`bind_static` (a chunk's VLM features) are uploaded once and stay resident while the same
    handle keeps coming back, so the denoising steps only upload ``x_t`` and ``t``.
    """

    def __init__(self, plan_path: str | Path, graph: str, max_batch: int = 1, precision: str = "fp16", route: str = "") -> None:
        from xvla.core.batch_profiles import profile_for

        trt, cudart = import_tensorrt()
        self._trt, self._cudart = trt, cudart
        self._profile_for = profile_for
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
        first = self.inputs[0].name
        self.profiles = []  # (min, opt, max) batch per optimisation profile
        for p in range(int(self._engine.num_optimization_profiles)):
            lo, opt, hi = (tuple(s) for s in self._engine.get_tensor_profile_shape(first, p))
            self.profiles.append((int(lo[0]), int(opt[0]), int(hi[0])))
        self.batch_limit = max(hi for _, _, hi in self.profiles)
        self.warms_per_batch = True
        if int(max_batch) > self.batch_limit:
            log.warning("engine %s: max_batch %d exceeds the plan's largest optimisation profile (%d); using %d",
                        graph, max_batch, self.batch_limit, self.batch_limit)
        self.max_rows = max(1, min(int(max_batch), self.batch_limit))
        self._profile = -1
        self._resident: dict[str, int] = {}  # input name -> StaticInputs.key whose data is on the device
        self._device_ptr: dict[str, int] = {}
        self._host_ptr: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}  # uint8 views of the pinned buffers
        self._allocate(self.max_rows)
        self.info = EngineInfo(graph=graph, backend="tensorrt", provider=f"TensorRT {trt.__version__}",
                               precision=precision, max_batch=self.max_rows, route=route)

    def _select_profile(self, rows: int) -> None:
        try:
            p = self._profile_for(self.profiles, rows)
        except ValueError as exc:
            raise EngineError(f"{self.info.graph if hasattr(self, 'info') else ''}: {exc}") from exc
        if p != self._profile:
            if not self._context.set_optimization_profile_async(p, self._stream):
                raise EngineError(f"TensorRT could not select optimisation profile {p}")
            self._profile = p

    def _allocate(self, rows: int) -> None:
        """Device + pinned host buffers for ``rows`` rows of every input and output (once, at load)."""
        import ctypes

        self._select_profile(rows)
        for spec in self.inputs:
            shape = (rows, *self._static_dims(spec))
            if not self._context.set_input_shape(spec.name, shape):
                raise EngineError(f"TensorRT rejected input {spec.name} shape {shape}")
        for spec in self.inputs + self.outputs:
            shape = (rows, *self._static_dims(spec)) if spec in self.inputs else tuple(
                int(d) for d in self._context.get_tensor_shape(spec.name))
            nbytes = max(1, int(np.prod(shape)) * np.dtype(spec.dtype).itemsize)
            self._device_ptr[spec.name] = int(_check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            host = int(_check(self._cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
            self._host_ptr[spec.name] = host
            self._host[spec.name] = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(host))

    def _static_dims(self, spec: TensorSpec) -> tuple[int, ...]:
        dims = tuple(spec.shape[1:])
        if any(not isinstance(d, int) for d in dims):  # a non-batch dynamic axis: the profile's max
            hi = self._engine.get_tensor_profile_shape(spec.name, len(self.profiles) - 1)[2]
            dims = tuple(int(d) for d in tuple(hi)[1:])
        return dims

    def _view(self, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self._host[name]
        if n > buf.nbytes:
            raise EngineError(f"{self.info.graph}: {name} of shape {shape} exceeds the buffer for "
                              f"{self.max_rows} rows (max_batch)")
        return buf[:n].view(dtype).reshape(shape)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        return self._execute(inputs, None)

    def run_bound(self, static: StaticInputs, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs({**static.arrays, **inputs})
        return self._execute(inputs, static)

    def _execute(self, inputs: Mapping[str, np.ndarray], static: StaticInputs | None) -> dict[str, np.ndarray]:
        cudart, ctx = self._cudart, self._context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        first = self.inputs[0].name
        source = static.arrays if static is not None and first in static.arrays else inputs
        rows = int(np.shape(source[first])[0])
        self._select_profile(rows)
        for spec in self.inputs:
            bound = static is not None and spec.name in static.arrays
            arr = np.asarray(static.arrays[spec.name] if bound else inputs[spec.name])
            if not ctx.set_input_shape(spec.name, arr.shape):
                raise EngineError(f"{self.info.graph}: input {spec.name} shape {arr.shape} outside the engine's profile")
            if bound and self._resident.get(spec.name) == static.key:
                pass  # already on the device: the same static handle as the last upload
            else:
                host = self._view(spec.name, arr.shape, spec.dtype)
                np.copyto(host, arr, casting="unsafe")  # same cast as np.asarray(arr, spec.dtype)
                _check(cudart.cudaMemcpyAsync(self._device_ptr[spec.name], self._host_ptr[spec.name], host.nbytes,
                                              h2d, self._stream), "memcpy H2D")
                if bound:
                    self._resident[spec.name] = static.key
                else:
                    self._resident.pop(spec.name, None)
            ctx.set_tensor_address(spec.name, self._device_ptr[spec.name])
        views: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            views[spec.name] = self._view(spec.name, tuple(int(d) for d in ctx.get_tensor_shape(spec.name)), spec.dtype)
            ctx.set_tensor_address(spec.name, self._device_ptr[spec.name])
        if not ctx.execute_async_v3(self._stream):
            raise EngineError(f"{self.info.graph}: TensorRT execution failed")
        for spec in self.outputs:
            _check(cudart.cudaMemcpyAsync(self._host_ptr[spec.name], self._device_ptr[spec.name],
                                          views[spec.name].nbytes, d2h, self._stream), "memcpy D2H")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: v.copy() for name, v in views.items()}  # the pinned buffers are reused by the next call

    def close(self) -> None:
        for ptr in self._device_ptr.values():
            self._cudart.cudaFree(ptr)
        for ptr in self._host_ptr.values():
            self._cudart.cudaFreeHost(ptr)
        self._device_ptr.clear()
        self._host_ptr.clear()
        self._host.clear()
        self._resident.clear()
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
