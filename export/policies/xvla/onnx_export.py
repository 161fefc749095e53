"""One graph -> one ONNX file (+ external data), with a real dynamic batch axis.

torch 2.13 exports through ``torch.export`` (``dynamo=True``) and always writes the weights
as external data next to the graph (``<file>.data``). We keep that layout: it is what the
runtime and TensorRT's ONNX parser expect for models over 2 GB, so tiny and 0.9B bundles look
the same.

Opset: 20 by default. At opset >= 23 SDPA becomes ONE ``Attention`` node. Measured on ONNX
Runtime 1.31 CPU (2 threads, batch 1, interleaved medians): action graph tiny 2.65 -> 1.70 ms,
a 512-wide 8-block head 291 -> 284 ms, vlm graph unchanged (118 ms): a small gain on CPU. But
TensorRT's ONNX parser reads ``Attention`` only from 10.14 on, and the fp32 islands of a
low-precision TensorRT build pin the q.k^T MatMul, which opset 23 hides inside the node. So
the default stays 20; ``--opset 23`` is there for ONNX-Runtime-only deployments.

Tracing options: ``optimize=False`` (ONNX Runtime and TensorRT fold and fuse at load; the
export is ~25% faster and initializers keep their parameter names, which lets
:class:`TemplateCache` swap weights into a graph traced before).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from xvla.export.policies.xvla.graphs import BATCH, GraphSpec, TensorSpec
from xvla.export.progress import quiet_exporters

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
MIN_OPSET = 18


class ExportError(RuntimeError):
    """The PyTorch -> ONNX conversion failed or produced a graph that does not match its spec."""


@dataclass
class ExportedGraph:
    name: str
    file: str  # relative to the bundle folder
    external_data: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    steps: Optional[int] = None  # the unrolled ``chunk`` graph's fixed step count

    def manifest_entry(self) -> dict:
        entry = {"file": self.file, "external_data": list(self.external_data), "opset": self.opset,
                 "inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}
        if self.steps is not None:
            entry["steps"] = self.steps
        return entry


def export_graph(spec: GraphSpec, out_dir: Path, *, opset: int = DEFAULT_OPSET, verbose: bool = False,
                 example_batch: int = 2, cache: Optional["TemplateCache"] = None,
                 cache_keys: Optional[dict[str, str]] = None) -> ExportedGraph:
    """Export ``spec`` to ``out_dir/<name>.onnx`` (+ ``.onnx.data``) and check the result's I/O.

    With a ``cache`` and ``cache_keys`` (traced part name -> :func:`template_key`), a graph of
    the same architecture traced before is reused and only its weights are replaced: seconds
    instead of minutes. Composite graphs (``spec.parts``) are joined from their parts. The
    parity gate checks the result either way.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; the dynamo exporter needs >= {MIN_OPSET}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    data = out_dir / f"{spec.name}.onnx.data"
    for p in (path, data):
        if p.exists():
            p.unlink()
    if spec.parts:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{spec.name}-parts-") as tmp:
            files = [export_graph(part, Path(tmp), opset=opset, verbose=verbose, example_batch=example_batch,
                                  cache=cache, cache_keys=cache_keys) for part in spec.parts]
            join_graphs([Path(tmp) / f.file for f in files], path, [s.name for s in spec.outputs])
    else:
        _export_single(spec, path, opset=opset, verbose=verbose, example_batch=example_batch, cache=cache,
                       key=(cache_keys or {}).get(spec.name))
    _check_io(spec, path)
    external = [data.name] if data.exists() else []
    steps = getattr(spec.module, "steps", None)
    return ExportedGraph(spec.name, path.name, external, list(spec.inputs), list(spec.outputs), opset, steps)


def _export_single(spec: GraphSpec, path: Path, *, opset: int, verbose: bool, example_batch: int,
                   cache: Optional["TemplateCache"], key: Optional[str]) -> None:
    template = cache.lookup(key) if (cache is not None and key) else None
    if template is not None:
        swap_weights(template / f"{spec.name}.onnx", spec.module, path)
        return
    _torch_export(spec, path, opset=opset, verbose=verbose, example_batch=example_batch)
    if cache is not None and key:
        cache.store(key, path, spec.name)


def join_graphs(parts: list[Path], out_path: Path, outputs: list[str]) -> None:
    """Chain graphs into one file: each part's inputs come from earlier outputs or become graph inputs.

    Internal names of every part after the first get a prefix so that node, tensor and
    initializer names cannot collide; inputs and outputs keep their contract names.
    """
    import onnx
    from onnx import compose

    merged = onnx.load(str(parts[0]))
    for i, part in enumerate(parts[1:], start=1):
        nxt = compose.add_prefix(onnx.load(str(part)), f"part{i}/", rename_inputs=False, rename_outputs=False)
        produced = {o.name for o in merged.graph.output}
        io_map = [(inp.name, inp.name) for inp in nxt.graph.input if inp.name in produced]
        keep = [o.name for o in merged.graph.output] + [o.name for o in nxt.graph.output]
        merged = compose.merge_models(merged, nxt, io_map=io_map, outputs=keep)
    by_name = {o.name: o for o in merged.graph.output}
    missing = [n for n in outputs if n not in by_name]
    if missing:
        raise ExportError(f"joining {[p.name for p in parts]}: outputs {missing} not produced")
    ordered = [by_name[n] for n in outputs]
    del merged.graph.output[:]
    merged.graph.output.extend(ordered)
    onnx.save_model(merged, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_path.name + ".data", size_threshold=1024)


def _torch_export(spec: GraphSpec, path: Path, *, opset: int, verbose: bool, example_batch: int) -> None:
    feeds = spec.example_inputs(batch=example_batch)
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    batch = torch.export.Dim(BATCH, min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in spec.inputs)
    try:
        # optimize=False: ONNX Runtime and TensorRT fold and fuse at load anyway (measured: same
        # latency), the export is ~25% faster, and initializers keep their parameter names,
        # which is what lets TemplateCache swap weights into an existing graph.
        with torch.no_grad(), quiet_exporters(verbose):
            torch.onnx.export(spec.module.eval(), args, str(path), input_names=spec.input_names,
                              output_names=spec.output_names, opset_version=opset, dynamo=True,
                              external_data=True, dynamic_shapes=dynamic_shapes, optimize=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the graph's name
        raise ExportError(f"graph {spec.name!r}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------ templates


def _fingerprint(value: object) -> object:
    """A config as plain data, without the free-form ``extra`` dicts (they do not change graphs)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "extra"}
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _fingerprint(v) for k, v in sorted(value.items())}
    return value


def template_key(spec: GraphSpec, config_part: object, opset: int) -> str:
    """Everything that shapes a graph's structure: I/O, module, the relevant config, versions."""
    from xvla.export.policies.xvla.manifest import _package_version

    blob = json.dumps({
        "graph": spec.name, "module": type(spec.module).__name__, "steps": getattr(spec.module, "steps", None),
        "inputs": [s.to_dict() for s in spec.inputs], "outputs": [s.to_dict() for s in spec.outputs],
        "config": _fingerprint(config_part), "opset": opset, "torch": torch.__version__,
        "exporter": _package_version(),
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class TemplateCache:
    """Exported graphs keyed by architecture, reused with new weights (``--cache-dir``).

    Tracing the 0.9B model takes many minutes and most exports are fine-tunes of an
    architecture exported before; only the initializers differ.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def lookup(self, key: str) -> Optional[Path]:
        d = self.root / key
        return d if (d / "template.json").is_file() else None

    def store(self, key: str, onnx_path: Path, name: str) -> None:
        final = self.root / key
        if (final / "template.json").is_file():
            return
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        shutil.copy2(onnx_path, tmp / f"{name}.onnx")
        data = onnx_path.with_name(onnx_path.name + ".data")
        if data.exists():
            shutil.copy2(data, tmp / data.name)
        (tmp / "template.json").write_text(json.dumps({"graph": name, "key": key}) + "\n")
        try:
            tmp.rename(final)
        except OSError:  # another process stored it first
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ parallel tracing


def graph_config_part(model: torch.nn.Module, graph: str) -> object:
    """The part of the config a graph's structure depends on (the template key's config)."""
    cfg = model.config
    if graph == "vlm":  # the encoder alone: the skill heads are a separate part (``skill_heads``)
        return {"florence": cfg.florence_config}
    if graph == "skill_heads":
        return {"projection_dim": cfg.florence_config.projection_dim, "num_skills": cfg.num_skills}
    return cfg


def rebuildable_from_config(model: torch.nn.Module) -> bool:
    """True when ``XVLA(model.config)`` has exactly the model's parameters (names and shapes).

    Then a fresh model traced in another process gives the same graph, and only the weights
    need swapping. Built on the meta device: no memory, a fraction of a second even for 0.9B.
    """
    from xvla.export.policies.xvla.model import XVLA

    if type(model) is not XVLA:
        return False
    try:
        with torch.device("meta"):
            fresh = XVLA(type(model.config).from_dict(model.config.to_dict()))
    except Exception:  # noqa: BLE001 - anything unusual: trace in-process instead
        return False
    a = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return a == b


@dataclass(frozen=True)
class TraceRequest:
    """One graph to trace from a config in a worker process, stored in the cache under ``key``."""

    config: dict
    graph: str
    options: dict
    opset: int
    key: str


def _worker_init() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # tracing is single-threaded Python; leave the cores to the other workers
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)


def _trace_in_worker(req: TraceRequest, cache_root: str) -> str:
    from xvla.export.policies.xvla.graphs import GraphOptions, build_graph_specs
    from xvla.export.policies.xvla.model import XVLA, XVLAConfig

    torch.manual_seed(0)
    model = XVLA(XVLAConfig.from_dict(req.config)).eval()
    opts = dict(req.options)
    opts["image_size"] = tuple(opts["image_size"])
    from xvla.export.policies.xvla.graphs import traced_parts

    spec = traced_parts(build_graph_specs(model, GraphOptions(**opts)))[req.graph]
    key = template_key(spec, graph_config_part(model, req.graph), req.opset)
    if key != req.key:
        raise ExportError(f"graph {req.graph!r}: a model rebuilt from its config traces differently "
                          f"(template key {key} != {req.key})")
    cache = TemplateCache(Path(cache_root))
    if cache.lookup(key) is None:
        work = Path(cache_root) / f".trace-{key}-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            path = work / f"{req.graph}.onnx"
            _torch_export(spec, path, opset=req.opset, verbose=False, example_batch=2)
            cache.store(key, path, req.graph)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return key


_POOLS: dict[int, Any] = {}


def _pool(jobs: int):
    """A process pool kept for the life of this process (workers pay torch's import once)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = next(iter(_POOLS.values()), None)  # one pool per process; the first caller sizes it
    if pool is None:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)
        _POOLS[jobs] = pool
    return pool


_INFLIGHT: dict[tuple[str, str], Any] = {}


def submit_traces(requests: list[TraceRequest], cache: "TemplateCache", jobs: int) -> list:
    """Start tracing ``requests`` in worker processes; returns their futures without waiting.

    A key already cached is skipped; a key already being traced (by an earlier call in this
    process) is not traced twice: its running future is returned instead.
    """
    futures = []
    for req in requests:
        if cache.lookup(req.key) is not None:
            continue
        slot = (str(Path(cache.root).resolve()), req.key)
        fut = _INFLIGHT.get(slot)
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = _pool(max(1, jobs)).submit(_trace_in_worker, req, str(cache.root))
            _INFLIGHT[slot] = fut
        futures.append((req, fut))
    return futures


def trace_parallel(requests: list[TraceRequest], cache: "TemplateCache", jobs: int) -> None:
    """Trace several graphs at once, one process each (up to ``jobs``), into ``cache``; wait for them.

    Tracing is single-threaded Python that takes tens of seconds (tiny) to many minutes (0.9B)
    per graph; the vlm, geometry and action graphs are independent.
    """
    errors = []
    for req, fut in submit_traces(requests, cache, jobs):
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - collected, then raised together
            errors.append(f"{req.graph}: {type(exc).__name__}: {exc}")
    if errors:
        raise ExportError("parallel tracing failed: " + "; ".join(errors))


def pool_started() -> bool:
    return bool(_POOLS)


def shutdown_pool(kill: bool = False) -> None:
    """Stop the worker processes; ``kill`` also ends traces still running (e.g. prefetches nobody waits for).

    Without it, interpreter exit waits for every running trace to finish.
    """
    for pool in list(_POOLS.values()):
        procs = list(getattr(pool, "_processes", {}).values()) if kill else []
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    _POOLS.clear()
    _INFLIGHT.clear()


def swap_weights(template: Path, module: torch.nn.Module, out_path: Path) -> None:
    """Copy ``template`` to ``out_path`` with every parameter/buffer initializer taken from ``module``.

    Initializers are named by the wrapper's parameter names (exported with optimize=False);
    the others are constants traced from the config, identical for the same template key.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(template))
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(dict(module.named_buffers(remove_duplicate=False)))
    replaced = 0
    for init in model.graph.initializer:
        t = tensors.get(init.name)
        if t is None:
            continue
        arr = t.detach().cpu().contiguous().numpy()
        if tuple(arr.shape) != tuple(init.dims):
            raise ExportError(f"template {template}: initializer {init.name} has shape {list(init.dims)}, "
                              f"the model has {list(arr.shape)}")
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        replaced += 1
    if replaced == 0:
        raise ExportError(f"template {template}: no initializer matched the model's parameters")
    onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_path.name + ".data", size_threshold=1024)


_ONNX_DTYPES = {1: "float32", 7: "int64", 9: "bool", 10: "float16", 16: "bfloat16", 6: "int32"}


def _check_io(spec: GraphSpec, path: Path) -> None:
    """The file's inputs/outputs must be exactly the spec's names, dtypes and shapes (batch symbolic)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[tuple[str, str, tuple]]:
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
            out.append((v.name, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)), dims))
        return out

    for kind, got, want in (("input", describe(model.graph.input), spec.inputs),
                            ("output", describe(model.graph.output), spec.outputs)):
        if [g[0] for g in got] != [w.name for w in want]:
            raise ExportError(f"graph {spec.name!r}: {kind}s are {[g[0] for g in got]}, expected "
                              f"{[w.name for w in want]}")
        for (name, dtype, dims), w in zip(got, want):
            if dtype != w.dtype:
                raise ExportError(f"graph {spec.name!r}: {kind} {name} has dtype {dtype}, expected {w.dtype}")
            if len(dims) != len(w.shape) or isinstance(dims[0], int):
                raise ExportError(f"graph {spec.name!r}: {kind} {name} has shape {list(dims)}; expected "
                                  f"{list(w.shape)} with a symbolic batch axis (did torch.export specialise it?)")
            fixed_got = [d for d in dims[1:]]
            fixed_want = list(w.shape[1:])
            if fixed_got != fixed_want:
                raise ExportError(f"graph {spec.name!r}: {kind} {name} has shape {list(dims)}, expected {list(w.shape)}")


def onnx_file_size(out_dir: Path, graph: ExportedGraph) -> int:
    return sum(os.path.getsize(Path(out_dir) / f) for f in [graph.file, *graph.external_data])


def ort_session(path: Path, threads: int = 0, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session (full graph optimisations; ``threads`` 0 = ORT's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=list(providers))


def numpy_feeds(spec_inputs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast feeds to the declared dtypes (ORT is strict about int64 vs int32, bool vs uint8)."""
    return {s.name: np.ascontiguousarray(feeds[s.name], dtype=np.dtype(s.dtype)) for s in spec_inputs}
