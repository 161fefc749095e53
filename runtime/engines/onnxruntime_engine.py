"""ONNX Runtime engine with the execution provider chosen by flag (cpu, cuda, tensorrt).

ONNX Runtime itself falls back to the CPU provider, with only a log line, when CUDA or
TensorRT libraries fail to load. A robot served 20x slower than planned is worse than a
service that refuses to start, so we check which providers the session really got and
raise unless the caller explicitly allowed the fallback.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

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


@dataclass(frozen=True)
class ThreadPolicy:
    """Intra-op threads and spinning for one session, chosen per machine (see :func:`thread_policy`)."""

    intra_op_threads: int
    spin: bool
    reason: str
    probe: bool = False  # time 1 thread against intra_op_threads at load and keep the faster


# Graphs up to this size (ONNX + external data) are cheap to load twice: their thread count is measured.
PROBE_MAX_BYTES = 64 * 2**20


def usable_cores() -> int:
    """CPU cores this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_policy(first_provider: str, intra_op_threads: int = 0, spin: bool | None = None,
                  cores: int | None = None, graph_bytes: int | None = None) -> ThreadPolicy:
    """One decision per machine instead of one fixed default.

    * GPU providers: 1 thread, no spin (the CPU only launches kernels).
    * An explicit ``intra_op_threads`` (``--threads``) wins.
    * <= 4 usable cores: all of them, no spinning: a spinning pool on a small or shared machine takes
      the cores the event loop and the other graph need.
    * larger machines: all cores but one (the event loop answering robots) with spinning on, which
      saves the thread wake-up between the ~dozens of ops of a denoising step.
    * a small graph (``graph_bytes`` <= PROBE_MAX_BYTES) is probed at load: one thread against the
      pool above, the faster kept (waking a pool for a small op can cost more than it saves, e.g. the
      tiny action step on a busy 2-core machine).
    ``XVLA_ORT_SPIN=0/1`` overrides the spin decision.
    """
    cores = usable_cores() if cores is None else max(1, int(cores))
    env = os.environ.get("XVLA_ORT_SPIN")
    if spin is None and env in ("0", "1"):
        spin = env == "1"
    if first_provider != "CPUExecutionProvider":
        return ThreadPolicy(1, bool(spin), "gpu provider: the CPU only launches kernels")
    if intra_op_threads:
        n = int(intra_op_threads)
        return ThreadPolicy(n, bool(spin) if spin is not None else False, f"--threads {n}")
    probe = cores > 1 and graph_bytes is not None and graph_bytes <= PROBE_MAX_BYTES
    if cores <= 4:
        return ThreadPolicy(cores, bool(spin) if spin is not None else False,
                            f"{cores} cores: all of them, no spinning", probe)
    return ThreadPolicy(cores - 1, True if spin is None else bool(spin),
                        f"{cores} cores: one left to the event loop, spinning", probe)


def graph_size(path: Path) -> int:
    """Bytes of an ONNX file plus its external-data files next to it (``<name>.data``)."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.is_file())


def provider_name(flag: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; full provider names pass through."""
    if flag in PROVIDERS:
        return PROVIDERS[flag]
    if flag in PROVIDERS.values():
        return flag
    raise EngineError(f"unknown provider {flag!r}; choose from {sorted(PROVIDERS)}")


def expand_providers(wanted: Sequence[str]) -> list[str]:
    """The provider chain ONNX Runtime gets: TensorRT is always followed by CUDA (nodes TensorRT rejects
    run there, not on the CPU), and CPU closes every chain (ops without a GPU kernel, e.g. shape ops)."""
    chain: list[str] = []
    for p in wanted:
        if p not in chain:
            chain.append(p)
        if p == "TensorrtExecutionProvider" and "CUDAExecutionProvider" not in wanted:
            chain.append("CUDAExecutionProvider")
    if "CPUExecutionProvider" in chain:
        chain.remove("CPUExecutionProvider")
    return chain + ["CPUExecutionProvider"]


def trt_profile_shapes(input_shapes: Mapping[str, Sequence[int | str]], max_batch: int) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` for every batch bucket (a name repeated = one more profile).

    Without explicit profiles ONNX Runtime's TensorRT provider rebuilds its engines when a batch size
    it has not seen arrives, in the middle of serving.
    """
    from xvla.core.batch_profiles import batch_profiles

    profiles = batch_profiles(max_batch)
    out: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for lo, opt, hi in profiles:
        for name, shape in input_shapes.items():
            rest = [int(d) for d in list(shape)[1:]]
            for key, b in (("min", lo), ("opt", opt), ("max", hi)):
                out[key].append(f"{name}:" + "x".join(str(d) for d in [b, *rest]))
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in out.items()}


def _provider_options(name: str, cache_dir: Path | None, precision: str,
                      input_shapes: Mapping[str, Sequence[int | str]] | None = None, max_batch: int = 1) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        opts: dict[str, Any] = {"trt_fp16_enable": precision == "fp16", "trt_bf16_enable": precision == "bf16"}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        if input_shapes:
            opts.update(trt_profile_shapes(input_shapes, max_batch))
        return opts
    return {}


class OnnxRuntimeEngine(Engine):
    """One ONNX graph in an InferenceSession."""

    io_binding_on_cpu = False  # tests set it to exercise the IO-binding path on the CPU provider

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
        spin: bool | None = None,
        input_shapes: Mapping[str, Sequence[int | str]] | None = None,
    ) -> None:
        import onnxruntime as ort  # serve extra; never torch

        self._ort = ort
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{graph}: graph file not found: {path}")
        wanted = expand_providers([provider_name(p) for p in providers] or ["CPUExecutionProvider"])
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
        policy = thread_policy(usable[0], intra_op_threads, spin, graph_bytes=graph_size(path))
        provider_list = [(p, _provider_options(p, trt_cache_dir, precision, input_shapes, max_batch)) for p in usable]
        self._session = self._load(path, graph, policy.intra_op_threads, policy.spin, provider_list)
        if policy.probe and policy.intra_op_threads > 1:
            self._session, policy = self._probe_threads(path, graph, policy, provider_list)
        self.thread_policy = policy
        got = self._session.get_providers()
        inactive = [p for p in usable if p not in got]
        if inactive and not allow_fallback:
            # Installed but could not initialise (missing CUDA/cuDNN/TensorRT libraries, no GPU): every
            # requested provider is checked, not only the first (TensorRT up and CUDA down would send
            # TensorRT's rejected nodes to the CPU).
            raise ProviderUnavailableError(
                f"{graph}: requested {usable} but onnxruntime initialised {got}; {inactive} did not start (check "
                "the CUDA/cuDNN/TensorRT libraries and the GPU); pass allow_fallback=True to accept that."
            )
        if got[0] != wanted[0] or inactive:
            log.warning("engine %s: fell back from %s to %s (allow_fallback)", graph, wanted, got)
        self.inputs = [
            TensorSpec(i.name, _ORT_TYPES.get(i.type, i.type), tuple(i.shape)) for i in self._session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, _ORT_TYPES.get(o.type, o.type), tuple(o.shape)) for o in self._session.get_outputs()
        ]
        self._output_names = [o.name for o in self.outputs]
        self._dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}
        self._device = "cuda" if got[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self.warms_per_batch = self._device == "cuda"
        if got[0] == "TensorrtExecutionProvider" and input_shapes:
            self.batch_limit = max(1, int(max_batch))  # past the profiles TensorRT would rebuild mid-serving
        self.info = EngineInfo(
            graph=graph, backend="onnxruntime", provider=got[0], precision=precision, max_batch=max_batch, route=route,
            extra={"providers": ",".join(got), "intra_op_threads": str(policy.intra_op_threads),
                   "spin": str(int(policy.spin))},
        )

    def _load(self, path: Path, graph: str, threads: int, spin: bool, provider_list: list) -> Any:
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # Spinning pools take the cores the event loop and the other graph need on a small or shared
        # machine; the thread policy decides (see thread_policy).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=provider_list)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"{graph}: onnxruntime could not load {path.name}: {exc}") from exc

    def _probe_threads(self, path: Path, graph: str, policy: ThreadPolicy, provider_list: list,
                       rounds: int = 5) -> tuple[Any, ThreadPolicy]:
        """Times the pool against one thread on zeros at batch 1 (interleaved, medians) -> the faster session."""
        import time

        pool = self._session
        single = self._load(path, graph, 1, False, provider_list)
        feeds = {}
        for i in pool.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            feeds[i.name] = np.zeros(shape, dtype=_ORT_TYPES.get(i.type, "float32"))
        times: dict[int, list[float]] = {0: [], 1: []}
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # zeros may not be valid inputs (e.g. a KV cache): a skipped probe is no error
        try:
            for sess in (pool, single):
                sess.run(None, feeds, quiet)  # warm-up
            for _ in range(rounds):
                for k, sess in ((0, pool), (1, single)):
                    t0 = time.perf_counter()
                    sess.run(None, feeds, quiet)
                    times[k].append((time.perf_counter() - t0) * 1000.0)
        except Exception as exc:  # noqa: BLE001 - a graph that cannot run on zeros keeps the policy's choice
            log.info("engine %s: thread probe skipped (%s)", graph, exc)
            return pool, policy
        t_pool, t_one = float(np.median(times[0])), float(np.median(times[1]))
        if t_one < 0.9 * t_pool:
            return single, ThreadPolicy(1, False, f"probed: 1 thread {t_one:.2f} ms < {policy.intra_op_threads} "
                                                  f"threads {t_pool:.2f} ms")
        return pool, ThreadPolicy(policy.intra_op_threads, policy.spin,
                                  f"{policy.reason}; probed {t_pool:.2f} ms vs 1 thread {t_one:.2f} ms")

    def _feed(self, name: str, value: np.ndarray) -> np.ndarray:
        arr = np.asarray(value)
        dt = self._dtypes[name]
        if arr.dtype != dt or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=dt)
        return arr

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feeds = {s.name: self._feed(s.name, inputs[s.name]) for s in self.inputs}
        try:
            values = self._session.run(self._output_names, feeds)
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise EngineError(f"{self.info.graph}: onnxruntime run failed for inputs {shapes}: {exc}") from exc
        return dict(zip(self._output_names, values))

    def bind_static(self, inputs: Mapping[str, np.ndarray]) -> StaticInputs:
        """GPU sessions: OrtValues made once on the device (one upload per chunk, not per step), bound through
        IO binding. CPU sessions: the arrays, cast once; ``session.run`` reads host memory directly and IO
        binding only adds Python calls per step (measured slower on the tiny action step)."""
        arrays = {k: self._feed(k, v) for k, v in inputs.items() if k in self._dtypes}
        if self._device == "cpu" and not self.io_binding_on_cpu:
            return StaticInputs(arrays)
        values = {k: self._ort.OrtValue.ortvalue_from_numpy(v, self._device, 0) for k, v in arrays.items()}
        return StaticInputs(arrays, backing=values)

    def run_bound(self, static: StaticInputs, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """IO binding: the static OrtValues are bound as they are, the changing inputs are bound from numpy."""
        if not isinstance(static.backing, dict):  # a handle made by another engine (a batcher's merge)
            return self.run({**static.arrays, **inputs})
        self.check_inputs({**static.arrays, **inputs})
        binding = self._session.io_binding()
        try:
            for s in self.inputs:
                if s.name in static.backing:
                    binding.bind_ortvalue_input(s.name, static.backing[s.name])
                else:
                    binding.bind_cpu_input(s.name, self._feed(s.name, inputs[s.name]))
            for name in self._output_names:
                binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        except Exception as exc:
            raise EngineError(f"{self.info.graph}: onnxruntime run (IO binding) failed: {exc}") from exc
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
