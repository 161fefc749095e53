"""PyTorch engines for an X-VLA bundle (``--providers torch-cuda`` / ``torch-cpu``): never on the default path.

The bundle's manifest records where its weights came from (``source``: a preset + seed, or a
checkpoint folder); this module rebuilds that model with the exporter's own code, wraps it in the
same graph modules the ONNX files were traced from (``xvla.export.policies.xvla.graphs``) and serves them as
runtime Engines. Importing torch and ``xvla.export`` here is allowed because this module is only
imported when a torch provider is selected (the serving path stays torch-free otherwise).

* precision: ``torch-cuda`` runs bf16 by default (``torch-cuda-fp16``, ``torch-cuda-fp32``,
  ``torch-cpu`` = fp32, ``torch-cpu-bf16``); the model is cast once.
* the chunk: a ``chunk`` engine runs the whole denoising loop (N steps) as one call, so a chunk is
  VLM once + one chunk call + the numpy decode; the per-step ``action`` engine serves RTC prefixes.
* static inputs: ``bind_static`` moves the conditioning to the device once per chunk.
* CUDA graphs (CUDA only, on by default): each engine captures one graph per batch size of the
  bundle's batch list at warm-up, into static input/output buffers; a call copies into the static
  inputs and replays. A batch size outside the list, or a capture that fails, runs eagerly (the
  reason is in ``info.extra``). This path only runs on a GPU.
* parity: at load the fp32 model computes the reference chunk, the engines (at their precision)
  compute it the runtime's way; cosine and max abs are reported in ``info.extra`` and a result
  past the gate of the export parity check for that precision refuses to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from xvla.runtime.engines.base import Engine, EngineError, EngineInfo, StaticInputs, TensorSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TorchOptions:
    """What a ``torch-<device>[-<precision>]`` provider flag asks for."""

    device: str = "cpu"
    precision: str = "fp32"
    cuda_graphs: bool = True
    parity: bool = True

    @classmethod
    def from_flag(cls, flag: str, **overrides: Any) -> "TorchOptions":
        parts = flag.split("-")
        if len(parts) not in (2, 3) or parts[0] != "torch" or parts[1] not in ("cpu", "cuda"):
            raise EngineError(f"providers: {flag!r} is not torch-cpu / torch-cuda[-fp32|fp16|bf16]")
        device = parts[1]
        precision = parts[2] if len(parts) == 3 else ("bf16" if device == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise EngineError(f"providers: {flag!r}: precision must be one of {PRECISIONS}")
        return cls(device=device, precision=precision, cuda_graphs=device == "cuda", **overrides)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the export extra is missing
        raise EngineError(f"the torch providers need PyTorch (pip install 'xvla-runtime[export]'): {exc}") from exc
    return torch


def load_source_model(manifest: Mapping[str, Any]) -> Any:
    """The fp32 model the bundle was exported from (preset + seed, or checkpoint folder), in eval mode."""
    source = dict(manifest.get("source") or {})
    kind = source.get("kind")
    if kind == "preset":
        from xvla.export.policies.xvla.bundle_writer import preset_model

        return preset_model(str(source["preset"]), int(source.get("seed", 0))).model
    if kind == "checkpoint":
        from xvla.export.policies.xvla.bundle_writer import load_model

        return load_model(source["path"]).model
    raise EngineError(f"manifest.source: {source or 'missing'}: the torch providers rebuild the model from a "
                      "preset or a checkpoint folder; this bundle records neither (re-export it with xvla-export)")


class TorchEngine(Engine):
    """One graph module of the model on one device and dtype."""

    def __init__(self, module: Any, graph: str, entry: Mapping[str, Any], options: TorchOptions,
                 max_batch: int, batch_sizes: Sequence[int] = (1,), route: str = "") -> None:
        torch = _torch()
        self.torch, self.module, self.options = torch, module, options
        self.inputs = [TensorSpec(str(i["name"]), str(i["dtype"]), tuple(i["shape"])) for i in entry["inputs"]]
        self.outputs = [TensorSpec(str(o["name"]), str(o.get("dtype", "float32")), tuple(o.get("shape", ())))
                        for o in entry["outputs"]]
        self.steps = int(entry["steps"]) if entry.get("steps") else None
        self.device = torch.device(options.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[options.precision]
        self.batch_sizes = sorted({int(b) for b in batch_sizes if 1 <= int(b) <= max_batch})
        self.warms_per_batch = options.device == "cuda"
        self._graphs: dict[int, tuple[Any, dict[str, Any], Any]] = {}
        self._graph_note = "off" if not (options.cuda_graphs and options.device == "cuda") else "not captured yet"
        self.info = EngineInfo(graph=graph, backend="torch", provider=f"torch {torch.__version__} {options.device}",
                               precision=options.precision, max_batch=max_batch, route=route,
                               extra={"cuda_graphs": self._graph_note})

    # ------------------------------------------------------------------ tensors
    def _tensor(self, spec: TensorSpec, value: Any) -> Any:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            t = value
        else:
            t = torch.from_numpy(np.ascontiguousarray(value, dtype=spec.dtype))
        t = t.to(self.device, non_blocking=True)
        return t.to(self.dtype) if t.is_floating_point() else t

    def _call(self, tensors: Mapping[str, Any]) -> Any:
        with self.torch.inference_mode():
            return self.module(*[tensors[s.name] for s in self.inputs])

    def _numpy(self, out: Any) -> dict[str, np.ndarray]:
        values = out if isinstance(out, (tuple, list)) else (out,)
        return {s.name: v.detach().float().cpu().numpy() for s, v in zip(self.outputs, values)}

    # ------------------------------------------------------------------ Engine
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        return self._run({s.name: self._tensor(s, inputs[s.name]) for s in self.inputs})

    def bind_static(self, inputs: Mapping[str, np.ndarray]) -> StaticInputs:
        specs = {s.name: s for s in self.inputs}
        arrays = {k: np.asarray(v) for k, v in inputs.items() if k in specs}
        return StaticInputs(arrays, backing={k: self._tensor(specs[k], v) for k, v in arrays.items()})

    def run_bound(self, static: StaticInputs, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(static.backing, dict):
            return self.run({**static.arrays, **inputs})
        self.check_inputs({**static.arrays, **inputs})
        tensors = {s.name: static.backing[s.name] if s.name in static.backing else self._tensor(s, inputs[s.name])
                   for s in self.inputs}
        return self._run(tensors)

    def _run(self, tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
        rows = int(next(iter(tensors.values())).shape[0])
        captured = self._graphs.get(rows)
        try:
            if captured is None:
                return self._numpy(self._call(tensors))
            graph, static_in, static_out = captured
            for name, t in tensors.items():
                static_in[name].copy_(t, non_blocking=True)
            graph.replay()
            return self._numpy(static_out)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{self.info.graph}: torch {self.options.device} run failed: {exc}") from exc

    # ------------------------------------------------------------------ CUDA graphs (GPU only)
    def capture(self, batch: int) -> bool:
        """Captures this graph for ``batch`` rows into static buffers; False (eager) when it cannot."""
        torch = self.torch
        if not (self.options.cuda_graphs and self.device.type == "cuda") or batch in self._graphs:
            return batch in self._graphs
        try:
            static_in = {}
            for s in self.inputs:
                shape = tuple(batch if not isinstance(d, int) else int(d) for d in s.shape)
                dt = {"float32": self.dtype, "int64": torch.int64, "bool": torch.bool}[s.dtype]
                static_in[s.name] = (torch.ones(shape, dtype=dt, device=self.device) if s.dtype == "bool"
                                     else torch.zeros(shape, dtype=dt, device=self.device))
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # lazy inits and cuBLAS/cuDNN plans happen outside the capture
                    self._call(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._call(static_in)
            self._graphs[batch] = (graph, static_in, static_out)
            self._graph_note = f"captured for batch {sorted(self._graphs)}"
        except Exception as exc:  # noqa: BLE001 - e.g. a host sync inside the model: serve eagerly, say why
            self._graph_note = f"eager: capture failed at batch {batch}: {type(exc).__name__}: {exc}"[:300]
            log.warning("engine %s: %s", self.info.graph, self._graph_note)
            return False
        finally:
            self.info = EngineInfo(**{**self.info.__dict__, "extra": {**self.info.extra,
                                                                      "cuda_graphs": self._graph_note}})
        return True

    def close(self) -> None:
        self._graphs.clear()
        self.module = None


def create_torch_engines(bundle: Any, flag: str, route: str = "", **overrides: Any) -> dict[str, TorchEngine]:
    """Every graph of ``bundle`` (+ a ``chunk`` engine for the bundle's default steps) as torch engines.

    Raises EngineError when the parity of the engines' chunk against the fp32 chunk is past the gate.
    """
    torch = _torch()
    from xvla.export.policies.xvla.graphs import (
        ActionGraph,
        ChunkGraph,
        GeometryGraph,
        VLMGraph,
        model_has_geometry,
        model_has_prompts,
    )

    opts = TorchOptions.from_flag(flag, **overrides)
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"providers: {flag}: this torch ({torch.__version__}) sees no CUDA device")
    model = load_source_model(bundle.manifest).to(opts.device)
    prompts, geometry = model_has_prompts(model), model_has_geometry(model)
    graphs = dict(bundle.graphs)
    steps = int(bundle.policy["denoising"]["default_steps"])
    action_entry = graphs["action"]
    graphs["chunk"] = {"inputs": [{"name": "x1", "dtype": "float32", "shape": action_entry["inputs"][0]["shape"]}]
                       + list(action_entry["inputs"][2:]), "outputs": action_entry["outputs"], "steps": steps}
    modules = {"vlm": VLMGraph(model), "action": ActionGraph(model, prompts, geometry),
               "chunk": ChunkGraph(model, prompts, geometry, steps)}
    if geometry:
        modules["geometry"] = GeometryGraph(model)
    missing = [g for g in bundle.graphs if g not in modules]
    if missing:
        raise EngineError(f"torch providers: no module for graph(s) {missing}")
    reference = _reference_chunk(bundle, modules, graphs) if opts.parity and opts.precision != "fp32" else None
    if opts.precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[opts.precision])  # once
    batch_sizes = bundle.batch_sizes
    engines = {g: TorchEngine(modules[g], g, graphs[g], opts, bundle.max_batch, batch_sizes, route) for g in modules}
    if opts.parity:
        report = _chunk_parity(bundle, engines, graphs, reference, opts)
        extra = {"parity_cosine": f"{report['cosine']:.6f}", "parity_max_abs": f"{report['max_abs']:.3e}",
                 "parity_gate": f"cosine >= {report['min_cosine']}, max_abs <= {report['tolerance']}"}
        for e in engines.values():
            e.info = EngineInfo(**{**e.info.__dict__, "extra": {**e.info.extra, **extra}})
        if not report["passed"]:
            raise EngineError(f"torch providers: {flag} chunk is past the parity gate for {opts.precision}: "
                              f"cosine {report['cosine']:.6f} (min {report['min_cosine']}), max abs "
                              f"{report['max_abs']:.3e} (max {report['tolerance']})")
        log.info("torch engines %s: parity vs fp32 cosine %.6f max abs %.3e", flag, report["cosine"],
                 report["max_abs"])
    if opts.cuda_graphs and opts.device == "cuda":
        for e in engines.values():
            for b in e.batch_sizes:
                e.capture(b)
    return engines


def _parity_feeds(bundle: Any, graphs: Mapping[str, Any], batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for g in ("vlm", "geometry"):
        for i in (graphs.get(g) or {}).get("inputs", []):
            shape = [batch if not isinstance(d, int) else d for d in i["shape"]]
            if i["name"] == "input_ids":
                feeds[i["name"]] = rng.integers(4, 40, size=shape).astype(np.int64)
            elif i["dtype"] == "bool":
                feeds[i["name"]] = np.ones(shape, bool)
            elif i["name"] in ("extrinsics", "intrinsics"):
                n = 4 if i["name"] == "extrinsics" else 3
                feeds[i["name"]] = np.tile(np.eye(n, dtype=np.float32), (*shape[:-2], 1, 1))
            else:
                feeds[i["name"]] = rng.standard_normal(shape, dtype=np.float32)
    a = graphs["action"]["inputs"]
    shapes = {i["name"]: [batch if not isinstance(d, int) else d for d in i["shape"]] for i in a}
    feeds["noise"] = rng.standard_normal(shapes["x_t"], dtype=np.float32)
    feeds["proprio"] = rng.standard_normal(shapes["proprio"], dtype=np.float32)
    for k in ("domain_id", "task_id", "skill_id"):
        if k in shapes:
            feeds[k] = np.zeros(shapes[k], np.int64)
    return feeds


def _run_chunk(run: Any, bundle: Any, graphs: Mapping[str, Any], feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """VLM (+ geometry) once, the chunk graph, the runtime's numpy decode -> actions [B, T, D]."""
    from xvla.core.flow_matching import postprocess_actions

    vlm = run("vlm", {i["name"]: feeds[i["name"]] for i in graphs["vlm"]["inputs"]})
    cond = {**feeds, **vlm}
    if "geometry" in graphs:
        cond.update(run("geometry", {i["name"]: feeds[i["name"]] for i in graphs["geometry"]["inputs"]}))
    cond["x1"] = feeds["noise"]
    raw = run("chunk", {i["name"]: cond[i["name"]] for i in graphs["chunk"]["inputs"]})["action"]
    return postprocess_actions(raw, feeds["proprio"], bundle.policy["action_space"])


def _reference_chunk(bundle: Any, modules: Mapping[str, Any], graphs: Mapping[str, Any]) -> np.ndarray:
    """The fp32 chunk on the fp32 model (before it is cast)."""
    torch = _torch()
    device = next(modules["vlm"].parameters()).device

    def run(g: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = modules[g](*[torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in feeds.values()])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {o["name"]: v.float().cpu().numpy() for o, v in zip(graphs[g]["outputs"], out)}

    return _run_chunk(run, bundle, graphs, _parity_feeds(bundle, graphs))


def _chunk_parity(bundle: Any, engines: Mapping[str, TorchEngine], graphs: Mapping[str, Any],
                  reference: np.ndarray | None, opts: TorchOptions) -> dict[str, Any]:
    from xvla.export.policies.xvla.parity import ACTION_TOLERANCE, MIN_COSINE, compare

    feeds = _parity_feeds(bundle, graphs)
    got = _run_chunk(lambda g, f: engines[g].run(f), bundle, graphs, feeds)
    if reference is None:  # fp32 engines: the reference is the same computation (reported, trivially equal)
        reference = got
    p = compare(reference, got, ACTION_TOLERANCE[opts.precision], MIN_COSINE[opts.precision])
    return {"cosine": p.cosine, "max_abs": p.max_abs, "tolerance": p.tolerance, "min_cosine": p.min_cosine,
            "passed": p.passed}
