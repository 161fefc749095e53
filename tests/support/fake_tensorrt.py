"""A recorded fake of the parts of TensorRT's Python API that the builder and the runtime engine use.

It lets the exporter's engine building and the runtime's TensorRT engine run on a machine with no
GPU and no TensorRT: ``install(monkeypatch)`` puts a ``tensorrt`` module (and a ``cuda.bindings.runtime``
fake of cuda-python with host memory standing in for device memory) into ``sys.modules``. Everything
the code under test asks for is recorded: builder flags set/cleared, layer precisions, optimisation
profiles, every cudaMalloc / cudaMallocHost / memcpy. The engine "computes" ``out = 2 * x`` so results
can be checked.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__version__ = "10.9.0"


class _Dtype:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"trt.{self.name}"


float32, float16, bfloat16, int64, int32, bool_ = (_Dtype(n) for n in
                                                    ("float32", "float16", "bfloat16", "int64", "int32", "bool"))
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def nptype(dt: _Dtype) -> Any:
    return _NP[dt.name]


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    BF16 = 1
    TF32 = 2
    OBEY_PRECISION_CONSTRAINTS = 3


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 5


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class LayerType(enum.Enum):
    MATRIX_MULTIPLY = "matmul"
    SOFTMAX = "softmax"
    NORMALIZATION = "norm"
    REDUCE = "reduce"
    ELEMENTWISE = "elementwise"
    SHUFFLE = "shuffle"
    CAST = "cast"
    CONVOLUTION = "conv"


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class Logger:
    WARNING = 2

    def __init__(self, level: int = 2) -> None:
        self.level = level


@dataclass
class Tensor:
    name: str
    dtype: _Dtype = float32


@dataclass
class Layer:
    name: str
    type: LayerType
    inputs: list
    outputs: list
    precision: Any = None
    output_types: dict = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> Tensor:
        return self.outputs[i]

    def set_output_type(self, i: int, dt: Any) -> None:
        self.output_types[i] = dt


def attention_block_layers() -> list[Layer]:
    """LayerNorm -> q/k matmuls -> q.k^T -> scale -> softmax -> .v, plus a reduction: one transformer block."""
    t = {n: Tensor(n) for n in ("x", "ln", "q", "k", "v", "s", "ss", "p", "o", "r")}
    return [
        Layer("ln", LayerType.NORMALIZATION, [t["x"]], [t["ln"]]),
        Layer("q_proj", LayerType.MATRIX_MULTIPLY, [t["ln"]], [t["q"]]),
        Layer("k_proj", LayerType.MATRIX_MULTIPLY, [t["ln"]], [t["k"]]),
        Layer("v_proj", LayerType.MATRIX_MULTIPLY, [t["ln"]], [t["v"]]),
        Layer("qk", LayerType.MATRIX_MULTIPLY, [t["q"], t["k"]], [t["s"]]),
        Layer("scale", LayerType.ELEMENTWISE, [t["s"]], [t["ss"]]),
        Layer("softmax", LayerType.SOFTMAX, [t["ss"]], [t["p"]]),
        Layer("pv", LayerType.MATRIX_MULTIPLY, [t["p"], t["v"]], [t["o"]]),
        Layer("mean", LayerType.REDUCE, [t["o"]], [t["r"]]),
    ]


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[Layer] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        RECORD.parsed.append(path)
        self.network.layers = attention_block_layers()
        return True


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class TimingCache:
    def serialize(self) -> bytes:
        return b"cache"


class BuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = {BuilderFlag.TF32}  # TensorRT's default: TF32 on
        self.cleared: list[BuilderFlag] = []
        self.profiles: list[OptimizationProfile] = []
        self.pools: dict = {}

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.cleared.append(flag)
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        return TimingCache()

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool = False) -> bool:
        return True

    def get_timing_cache(self) -> TimingCache:
        return TimingCache()


class Builder:
    def __init__(self, logger: Logger) -> None:
        RECORD.builders.append(self)
        self.network: Network | None = None
        self.config: BuilderConfig | None = None

    def create_network(self, flags: int = 0) -> Network:
        self.network = Network(flags)
        return self.network

    def create_builder_config(self) -> BuilderConfig:
        self.config = BuilderConfig()
        return self.config

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        return b"fake-plan"


# ------------------------------------------------------------------------------ runtime side


class Engine:
    """A deserialised plan: ``x`` [B, 3] float32 and ``c`` [B, 2] float32 in, ``out = 2 * x + c.sum()`` out."""

    io = (("x", TensorIOMode.INPUT, float32, (-1, 3)), ("c", TensorIOMode.INPUT, float32, (-1, 2)),
          ("out", TensorIOMode.OUTPUT, float32, (-1, 3)))

    def __init__(self, profiles: list[tuple[int, int, int]]) -> None:
        self.profiles = profiles

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def _io(self, name: str) -> tuple:
        return next(t for t in self.io if t[0] == name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io(name)[1]

    def get_tensor_dtype(self, name: str) -> _Dtype:
        return self._io(name)[2]

    def get_tensor_shape(self, name: str) -> tuple:
        return self._io(name)[3]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple]:
        lo, opt, hi = self.profiles[profile]
        rest = self._io(name)[3][1:]
        return [(lo, *rest), (opt, *rest), (hi, *rest)]

    def create_execution_context(self) -> "Context":
        return Context(self)


class Context:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, index: int, stream: Any) -> bool:
        RECORD.profile_switches.append(index)
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        lo, _, hi = self.engine.profiles[self.profile]
        if not lo <= shape[0] <= hi:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name == "out":
            return self.shapes["x"]
        return self.shapes[name]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: Any) -> bool:
        b = self.shapes["x"][0]
        x = _view(self.addresses["x"], (b, 3))
        c = _view(self.addresses["c"], (b, 2))
        out = _view(self.addresses["out"], (b, 3))
        out[:] = 2 * x + c.sum(axis=1, keepdims=True)
        RECORD.executions.append(b)
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        pass

    def deserialize_cuda_engine(self, blob: bytes) -> Engine:
        return Engine(RECORD.engine_profiles)


# ------------------------------------------------------------------------------ cuda-python fake


_MEMORY: dict[int, ctypes.Array] = {}


def _view(ptr: int, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr)).reshape(shape)


def _alloc(nbytes: int) -> int:
    buf = (ctypes.c_char * max(int(nbytes), 1))()
    ptr = ctypes.addressof(buf)
    _MEMORY[ptr] = buf
    return ptr


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def cudaMalloc(nbytes: int) -> tuple[int, int]:
    RECORD.device_allocs.append(int(nbytes))
    return 0, _alloc(nbytes)


def cudaMallocHost(nbytes: int) -> tuple[int, int]:
    RECORD.host_allocs.append(int(nbytes))
    return 0, _alloc(nbytes)


def cudaFree(ptr: int) -> tuple[int]:
    RECORD.frees.append(ptr)
    return (0,)


cudaFreeHost = cudaFree


def cudaMemcpyAsync(dst: int, src: int, nbytes: int, kind: Any, stream: Any) -> tuple[int]:
    RECORD.copies.append((cudaMemcpyKind(kind).name, int(nbytes), src in _MEMORY))
    ctypes.memmove(dst, src, nbytes)
    return (0,)


def cudaStreamCreate() -> tuple[int, int]:
    return 0, 1


def cudaStreamSynchronize(stream: Any) -> tuple[int]:
    return (0,)


def cudaStreamDestroy(stream: Any) -> tuple[int]:
    return (0,)


class _Props:
    name = b"Fake GPU"
    major, minor = 9, 0


def cudaGetDeviceProperties(i: int) -> tuple[int, _Props]:
    return 0, _Props()


@dataclass
class Record:
    parsed: list = field(default_factory=list)
    builders: list = field(default_factory=list)
    engine_profiles: list = field(default_factory=lambda: [(1, 1, 1), (2, 4, 4)])
    profile_switches: list = field(default_factory=list)
    executions: list = field(default_factory=list)
    device_allocs: list = field(default_factory=list)
    host_allocs: list = field(default_factory=list)
    frees: list = field(default_factory=list)
    copies: list = field(default_factory=list)


RECORD = Record()


def install(monkeypatch: Any, version: str = "10.9.0") -> Record:
    """Injects the fakes as ``tensorrt`` and ``cuda.bindings.runtime``; returns a fresh Record."""
    global RECORD
    RECORD = Record()
    trt = sys.modules[__name__]
    monkeypatch.setattr(trt, "__version__", version)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = trt  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", trt)
    return RECORD
