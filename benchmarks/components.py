"""Component latency: vlm, geometry, one denoising step and the whole chunk, per backend, precision and batch.

Backends (each skipped with a reason when it cannot run here, never silently replaced):

* ``torch``        PyTorch eager on the exported graph modules; fp16/bf16 cast the model ONCE
                   (autocast over fp32 weights re-casts every weight at every timed call); on CUDA
                   inputs live on the GPU (``io=device``) and every sample ends with
                   ``torch.cuda.synchronize()``.
* ``ort-cpu``      ONNX Runtime, CPU provider, the bundle's graphs (ORT's defaults, as the runtime uses them).
* ``ort-cpu-nospin`` the same with ``session.intra_op.allow_spinning=0``: idle sessions' threads
                   stop spin-waiting, so the VLM and action sessions do not fight for the cores.
* ``ort-cuda``     ONNX Runtime, CUDA provider. Stages are timed with io-binding: inputs
                   already on the GPU, outputs bound to the GPU, ``synchronize_outputs()``
                   before the clock stops (kernel time, no PCIe copies).
* ``ort-tensorrt`` ONNX Runtime's TensorRT provider (fp16 through ``trt_fp16_enable``).
* ``tensorrt``     the bundle's native TensorRT plans (``engines/<graph>.plan``) through the
                   runtime's engine (host arrays in/out, stream synchronised).

The ``chunk`` stage is what a user waits for: torch's ``generate_actions`` or the runtime's
``Policy.generate_actions`` (VLM once, geometry once, the numpy flow-matching loop calling
the action graph ``steps`` times, postprocess), inputs and outputs on the host.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from xvla.benchmarks.inputs import chunk_feeds, graph_feeds
from xvla.benchmarks.stats import Distribution, time_call
from xvla.runtime.engines.base import Engine, EngineInfo, TensorSpec

log = logging.getLogger(__name__)

STAGES = ("vlm", "geometry", "action_step", "chunk")
GRAPH_OF_STAGE = {"vlm": "vlm", "geometry": "geometry", "action_step": "action"}


class Skip(Exception):
    """A case that cannot run on this machine; the message says why (it goes into the report)."""


@dataclass
class Case:
    preset: str
    backend: str
    provider: str
    precision: str
    stage: str
    batch: int
    io: str = "host"  # host: numpy in/out; device: inputs/outputs resident on the GPU
    dist: Optional[Distribution] = None
    samples_ms: list[float] = field(default_factory=list)
    skipped: Optional[str] = None
    flops: Optional[int] = None
    achieved_gflops: Optional[float] = None
    peak_gflops: Optional[float] = None
    peak_fraction: Optional[float] = None
    peak_source: Optional[str] = None
    memory_gib: Optional[float] = None

    def to_dict(self, keep_samples: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("dist", "samples_ms")}
        d["dist"] = self.dist.to_dict() if self.dist else None
        if keep_samples:
            d["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return d


# ----------------------------------------------------------------------------------- runners


class Runner(abc.ABC):
    """One backend at one precision for one bundle: builds timed closures per (stage, batch)."""

    backend: str
    device: str = "cpu"
    provider: str = ""
    io: str = "host"

    def __init__(self, bundle_dir: Path, manifest: Mapping[str, Any], precision: str, steps: int) -> None:
        self.bundle_dir, self.manifest, self.precision, self.steps = bundle_dir, manifest, precision, steps

    def stages(self) -> list[str]:
        return [s for s in STAGES if s != "geometry" or "geometry" in self.manifest["graphs"]]

    @abc.abstractmethod
    def prepare(self, stage: str, batch: int) -> Callable[[], object]:
        """The closure to time (inputs already built); raises Skip."""

    def sync(self) -> None:
        return None

    def memory_gib(self) -> Optional[float]:
        return None

    def reset_memory(self) -> None:
        """Called before every case, so ``memory_gib`` is that case's peak, not the runner's."""
        return None

    def close(self) -> None:
        return None

    def io_for(self, stage: str) -> str:
        return "host" if stage == "chunk" else self.io


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, bundle_dir: Path, manifest: Mapping[str, Any], precision: str, steps: int, *, preset: str,
                 device: str, seed: int = 0) -> None:
        super().__init__(bundle_dir, manifest, precision, steps)
        import torch

        from xvla.benchmarks.presets import build_model
        from xvla.export.policies.xvla.graphs import (
            ActionGraph,
            GeometryGraph,
            VLMGraph,
            model_has_geometry,
            model_has_prompts,
        )

        if device == "cuda" and not torch.cuda.is_available():
            raise Skip("torch: CUDA is not available to this torch build")
        if device == "cpu" and precision == "fp16":
            raise Skip("torch: fp16 eager on the CPU is not a serving configuration")
        self.torch, self.device = torch, device
        self.io = "device" if device == "cuda" else "host"  # the tensors are made on the device before timing
        self.provider = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.model = build_model(preset, seed=seed, device=device)
        if self.dtype is not None:
            self.model = self.model.to(self.dtype)  # once: no per-call re-cast of the fp32 weights
        prompts = model_has_prompts(self.model)
        geometry = model_has_geometry(self.model)
        self.modules = {"vlm": VLMGraph(self.model), "action": ActionGraph(self.model, prompts, geometry)}
        if geometry:
            self.modules["geometry"] = GeometryGraph(self.model)

    def io_for(self, stage: str) -> str:
        return self.io  # chunk included: its inputs are device tensors too

    def _tensors(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        out = {}
        for k, v in feeds.items():
            t = self.torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
            out[k] = t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t
        return out

    def prepare(self, stage: str, batch: int) -> Callable[[], object]:
        torch = self.torch
        if stage == "chunk":
            t = self._tensors(chunk_feeds(self.manifest, batch))
            model, steps = self.model, self.steps

            def chunk() -> object:
                with torch.inference_mode():
                    return model.generate_actions(t["input_ids"], t["image_input"], t["image_mask"], t["domain_id"],
                                                  t["proprio"], steps=steps, noise=t["noise"],
                                                  task_id=t.get("task_id"), skill_id=t.get("skill_id"),
                                                  extrinsics=t.get("extrinsics"), intrinsics=t.get("intrinsics"))
            return chunk
        graph = GRAPH_OF_STAGE[stage]
        names = [s["name"] for s in self.manifest["graphs"][graph]["inputs"]]
        t = self._tensors(graph_feeds(self.manifest, graph, batch))
        args = [t[n] for n in names]
        module = self.modules[graph]

        def call() -> object:
            with torch.inference_mode():
                return module(*args)
        return call

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def memory_gib(self) -> Optional[float]:
        if self.device == "cuda":
            return round(self.torch.cuda.max_memory_allocated() / 2**30, 3)
        return None

    def reset_memory(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        self.model = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


class _SessionEngine(Engine):
    """Adapter: one ORT session as a runtime Engine, so the runtime's Policy runs the chunk on it."""

    def __init__(self, session: Any, graph: str, provider: str, precision: str, max_batch: int) -> None:

        types = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool",
                 "tensor(float16)": "float16"}
        self.session = session
        self.inputs = [TensorSpec(i.name, types.get(i.type, i.type), tuple(i.shape)) for i in session.get_inputs()]
        self.outputs = [TensorSpec(o.name, types.get(o.type, o.type), tuple(o.shape)) for o in session.get_outputs()]
        self.info = EngineInfo(graph=graph, backend="onnxruntime", provider=provider, precision=precision,
                               max_batch=max_batch)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {s.name: np.ascontiguousarray(inputs[s.name], dtype=s.dtype) for s in self.inputs}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def close(self) -> None:
        self.session = None


ORT_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-tensorrt": "TensorrtExecutionProvider",
                 # the CPU provider with its intra-op threads told not to spin-wait between runs: the runtime
                 # keeps one session per graph, and spinning pools of idle sessions steal cores from the busy one
                 "ort-cpu-nospin": "CPUExecutionProvider"}


class OrtRunner(Runner):
    def __init__(self, bundle_dir: Path, manifest: Mapping[str, Any], precision: str, steps: int, *, backend: str,
                 cache_dir: Optional[Path] = None, threads: int = 0, io_binding: Optional[bool] = None,
                 spinning: bool = True) -> None:
        super().__init__(bundle_dir, manifest, precision, steps)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise Skip(f"{backend}: onnxruntime is not installed ({exc})") from exc
        self.ort, self.backend = ort, backend
        self.provider = ORT_PROVIDERS[backend]
        if self.provider not in ort.get_available_providers():
            raise Skip(f"{backend}: this onnxruntime ({ort.__version__}) has no {self.provider} "
                       f"(available: {ort.get_available_providers()}); install onnxruntime-gpu")
        if backend == "ort-tensorrt":
            if precision not in ("fp32", "fp16"):
                raise Skip(f"{backend}: {precision} is not a TensorRT-provider precision (fp32, fp16)")
        elif precision != "fp32":
            raise Skip(f"{backend}: bundles' ONNX graphs are fp32 (lower precision runs through TensorRT: "
                       "ort-tensorrt / tensorrt)")
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        # io-binding keeps inputs/outputs on the device; on the CPU provider it is the same code path on host memory
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        self.io = "device" if self.io_binding else "host"
        opts: dict[str, Any] = {}
        if backend == "ort-tensorrt":
            opts = {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir or (bundle_dir.parent / ".trt-cache" / bundle_dir.name))}
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        if not spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [(self.provider, opts)] + ([("CUDAExecutionProvider", {})] if backend == "ort-tensorrt" else [])
        self.sessions: dict[str, Any] = {}
        for graph, entry in manifest["graphs"].items():
            if graph == "chunk":
                continue
            sess = ort.InferenceSession(str(bundle_dir / entry["file"]), sess_options=so, providers=providers)
            if sess.get_providers()[0] != self.provider:
                raise Skip(f"{backend}: onnxruntime initialised {sess.get_providers()} instead of {self.provider} "
                           "(CUDA/cuDNN/TensorRT libraries missing?)")
            self.sessions[graph] = sess
        self._bindings: list[Any] = []
        self._policy = None

    def prepare(self, stage: str, batch: int) -> Callable[[], object]:
        if stage == "chunk":
            policy = self._get_policy()
            f = chunk_feeds(self.manifest, batch)
            steps = self.steps

            def chunk() -> object:
                return policy.generate_actions(f["input_ids"], f["image_input"], f["image_mask"], f["domain_id"],
                                               f["proprio"], steps=steps, noise=f["noise"], task_id=f.get("task_id"),
                                               skill_id=f.get("skill_id"), extrinsics=f.get("extrinsics"),
                                               intrinsics=f.get("intrinsics"))
            return chunk
        graph = GRAPH_OF_STAGE[stage]
        sess = self.sessions[graph]
        feeds = graph_feeds(self.manifest, graph, batch)
        out_names = [o.name for o in sess.get_outputs()]
        if not self.io_binding:
            return lambda: sess.run(out_names, feeds)
        binding = sess.io_binding()
        values = []
        for name, arr in feeds.items():
            v = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device, 0)
            values.append(v)
            binding.bind_ortvalue_input(name, v)
        for name in out_names:
            binding.bind_output(name, self.device)
        self._bindings.append((binding, values))

        def run() -> object:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()  # the clock stops after the device is done
            return binding
        return run

    def _get_policy(self):
        if self._policy is None:
            from xvla.runtime.bundle import Bundle
            from xvla.runtime.policies.xvla.runtime import XVLAPolicy

            bundle = Bundle.load(self.bundle_dir, verify_hashes=False)
            engines = {g: _SessionEngine(s, g, self.provider, self.precision, bundle.max_batch)
                       for g, s in self.sessions.items()}
            self._policy = XVLAPolicy(bundle, engines, seed=0)
        return self._policy

    def close(self) -> None:
        self._bindings.clear()
        self.sessions.clear()
        self._policy = None


class TensorRTRunner(Runner):
    backend = "tensorrt"
    device = "cuda"

    def __init__(self, bundle_dir: Path, manifest: Mapping[str, Any], precision: str, steps: int) -> None:
        super().__init__(bundle_dir, manifest, precision, steps)
        trt_info = manifest.get("tensorrt") or {}
        if not trt_info:
            raise Skip("tensorrt: the bundle has no TensorRT plans (export with --trt on the GPU that serves)")
        built = str(trt_info.get("precision", manifest.get("precision", "fp32")))
        if built != precision:
            raise Skip(f"tensorrt: the bundle's plans are {built}; {precision} needs plans built for it")
        try:
            from xvla.runtime.bundle import Bundle
            from xvla.runtime.engines.factory import create_engine
        except ImportError as exc:  # pragma: no cover
            raise Skip(f"tensorrt: {exc}") from exc
        try:
            bundle = Bundle.load(bundle_dir, verify_hashes=False)
            graphs = [g for g in manifest["graphs"] if g != "chunk"]
            self.engines = {g: create_engine(bundle, g, ["trt-native"]) for g in graphs}
        except Exception as exc:  # noqa: BLE001 - no tensorrt module, wrong GPU, ...: a reason, not a crash
            raise Skip(f"tensorrt: {exc}") from exc
        self.bundle = bundle
        self.provider = self.engines["vlm"].info.provider
        self._policy = None

    def prepare(self, stage: str, batch: int) -> Callable[[], object]:
        if stage == "chunk":
            from xvla.runtime.policies.xvla.runtime import XVLAPolicy

            if self._policy is None:
                self._policy = XVLAPolicy(self.bundle, self.engines, seed=0)
            policy, f, steps = self._policy, chunk_feeds(self.manifest, batch), self.steps
            return lambda: policy.generate_actions(f["input_ids"], f["image_input"], f["image_mask"], f["domain_id"],
                                                   f["proprio"], steps=steps, noise=f["noise"],
                                                   task_id=f.get("task_id"), skill_id=f.get("skill_id"),
                                                   extrinsics=f.get("extrinsics"), intrinsics=f.get("intrinsics"))
        graph = GRAPH_OF_STAGE[stage]
        if batch > self.bundle.max_batch:
            raise Skip(f"tensorrt: batch {batch} is above the plans' max_batch {self.bundle.max_batch}")
        engine, feeds = self.engines[graph], graph_feeds(self.manifest, graph, batch)
        return lambda: engine.run(feeds)

    def close(self) -> None:
        for e in self.engines.values():
            e.close()


# ----------------------------------------------------------------------------------- the sweep


@dataclass
class ComponentConfig:
    preset: str
    bundle_dir: Path
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup: int
    iters: int
    steps: int
    device: str
    max_seconds_per_case: Optional[float] = None
    threads: int = 0
    trt_bundles: dict[str, Path] = field(default_factory=dict)  # precision -> bundle with TensorRT plans
    trt_missing: dict[str, str] = field(default_factory=dict)  # precision -> why there is none


def _read_manifest(bundle: Path) -> dict[str, Any]:
    import json

    return json.loads((Path(bundle) / "manifest.json").read_text())


def make_runner(backend: str, cfg: ComponentConfig, manifest: Mapping[str, Any], precision: str) -> Runner:
    if backend == "torch":
        return TorchRunner(cfg.bundle_dir, manifest, precision, cfg.steps, preset=cfg.preset, device=cfg.device)
    if backend in ORT_PROVIDERS:
        return OrtRunner(cfg.bundle_dir, manifest, precision, cfg.steps, backend=backend, threads=cfg.threads,
                         spinning=not backend.endswith("-nospin"))
    if backend == "tensorrt":
        trt_bundle = cfg.trt_bundles.get(precision)
        if trt_bundle is None:
            raise Skip(cfg.trt_missing.get(precision) or f"tensorrt: no bundle with {precision} TensorRT plans "
                       "(they are built on the GPU that serves: xvla-export --trt --precision ...)")
        return TensorRTRunner(trt_bundle, _read_manifest(trt_bundle), precision, cfg.steps)
    raise ValueError(f"unknown backend {backend!r}")


def run_components(cfg: ComponentConfig, manifest: Mapping[str, Any], flops: Optional[Mapping[str, Any]] = None,
                   peak: Optional[Callable[[str, str], tuple[Optional[float], str]]] = None,
                   progress: Optional[Callable[[str], None]] = None) -> list[Case]:
    """Every (backend, precision, stage, batch) case of one preset; unrunnable ones carry ``skipped``."""
    cases: list[Case] = []
    for backend in cfg.backends:
        for precision in cfg.precisions:
            try:
                runner = make_runner(backend, cfg, manifest, precision)
            except Skip as why:
                cases.append(Case(cfg.preset, backend, "", precision, "*", 0, skipped=str(why)))
                continue
            try:
                for stage in runner.stages():
                    for batch in cfg.batch_sizes:
                        case = Case(cfg.preset, backend, runner.provider, precision, stage, batch,
                                    io=runner.io_for(stage))
                        if progress:
                            progress(f"{cfg.preset} {backend} {precision} {stage} b={batch}")
                        try:
                            runner.reset_memory()
                            fn = runner.prepare(stage, batch)
                            run = time_call(fn, warmup=cfg.warmup, iters=cfg.iters, sync=runner.sync,
                                            max_seconds=cfg.max_seconds_per_case)
                            case.dist, case.samples_ms = run.dist, run.samples_ms
                            case.memory_gib = runner.memory_gib()
                        except Skip as why:
                            case.skipped = str(why)
                        except Exception as exc:  # noqa: BLE001 - one failing case must not lose the rest
                            log.exception("case failed")
                            case.skipped = f"failed: {type(exc).__name__}: {exc}"
                        _attach_flops(case, flops, peak, runner.device)
                        cases.append(case)
            finally:
                runner.close()
    return cases


def _attach_flops(case: Case, flops: Optional[Mapping[str, Any]], peak, device: str) -> None:
    if not flops or case.dist is None or "error" in flops:
        return
    per_sample = int(flops.get(case.stage, 0) or 0)
    if not per_sample:
        return
    case.flops = per_sample * case.batch
    case.achieved_gflops = case.flops / (case.dist.p50 / 1000.0) / 1e9
    if peak is not None:
        p, source = peak(device, case.precision)
        if p:
            case.peak_gflops, case.peak_source = p, source
            case.peak_fraction = case.achieved_gflops / p
