"""TensorRT engines from the bundle's ONNX graphs (``xvla-export --trt``).

* ``import tensorrt`` is lazy: the exporter works without it, and ``--trt`` without it is a
  one-line error with the install command (exit code 2), before any slow work starts.
* One optimisation profile per batch bucket (1, 2-4, 5-8, ... up to max_batch, see
  :mod:`xvla.core.batch_profiles`), each tuned at its top (or at ``trt_opt_batch``): a batched
  call never runs batch-1 tactics. The runtime engine picks the profile per call.
* Precision. TensorRT 10 has builder flags: fp16/bf16 set ``FP16``/``BF16`` and pin the
  overflow-prone layers to fp32 with ``OBEY_PRECISION_CONSTRAINTS`` (layer norms and
  reductions). Attention (q.k^T, Softmax, .v) stays in low precision by default: TensorRT's
  fused attention needs fp16/bf16 inputs to both batched matmuls, and pinning them adds
  reformat kernels around every attention; ``fp32_attention=True`` (``--trt-fp32-attention``)
  pins them again for an fp16 graph whose scores overflow (the parity gate catches that).
  TensorRT 11 builds strongly typed networks only (the precision flags are gone): the types
  come from the ONNX file, so fp16/bf16 engines are built from a low-precision copy of the
  graph (:func:`lower_precision_onnx`) that keeps the same ops in fp32 behind Cast nodes.
  ``strongly_typed=True`` selects that path on TensorRT 10 too. fp32 CLEARS ``TF32`` on both
  paths (strongly typed networks still honour the TF32 flag), so fp32 engines are really fp32.
* A timing cache (``engines/timing.cache`` or ``--timing-cache``) makes rebuilds fast.
* The TensorRT version, GPU name and compute capability go into the manifest; the runtime
  refuses plans built elsewhere.
* The parity gate runs the whole chunk on the engines, like for ONNX Runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from xvla.export.policies.xvla.bundle_writer import ExportOptions
    from xvla.export.progress import Reporter

INSTALL_HINT = ("TensorRT is not installed: pip install tensorrt-cu12 cuda-python (CUDA 12; tensorrt-cu13 "
                "for CUDA 13) on a machine with an NVIDIA GPU, then re-run with --trt")

# ONNX ops kept in fp32 in low precision (the strongly typed path).
FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp",
            "Sin", "Cos", "Range", "Attention", "Erf", "Reciprocal")
# ... and with fp32_attention=True also these (plus the q.k^T MatMuls feeding them).
ATTENTION_OPS = ("Softmax",)
_PASS_THROUGH_OPS = ("Mul", "Div", "Add", "Sub", "Cast", "Where", "Reshape", "Transpose")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU) is missing; the message says what to install."""


class TensorRTBuildError(RuntimeError):
    pass


def require_tensorrt() -> Any:
    """``import tensorrt`` or raise TensorRTUnavailable with the one-line install hint."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTUnavailable(INSTALL_HINT) from exc
    return trt


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_properties() -> dict[str, str]:
    """GPU name and compute capability of device 0, as the runtime compares them when it loads the plans."""
    from xvla.export.tensorrt_runner import gpu_properties as probe

    props = probe()
    if props is None:
        raise TensorRTUnavailable("no usable NVIDIA GPU: TensorRT engines are built on the GPU model that will "
                                  "run them; " + INSTALL_HINT)
    return props


# ------------------------------------------------------------------------------------ low precision ONNX


def attention_score_matmuls(model: Any) -> list[str]:
    """Names of MatMul nodes whose output reaches a Softmax through elementwise/reshape ops only.

    These compute q.k^T: their fp16 output overflows on long sequences (DINOv2-L, the 0.9B head).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        frontier = [node.input[0]]
        for _ in range(6):
            nxt = []
            for tensor in frontier:
                prod = producers.get(tensor)
                if prod is None:
                    continue
                if prod.op_type == "MatMul":
                    found.append(prod.name)
                elif prod.op_type in _PASS_THROUGH_OPS:
                    nxt.extend(i for i in prod.input if i)
            frontier = nxt
    return sorted(set(found))


def lower_precision_onnx(src: Path, dst: Path, precision: str, fp32_attention: bool = False) -> Path:
    """fp32 graph -> fp16/bf16 graph for a strongly typed TensorRT network.

    Inputs/outputs stay fp32 (the runtime's contract does not change with precision); ops in
    :data:`FP32_OPS` run in fp32 behind Cast nodes; with ``fp32_attention`` so do Softmax and the
    attention-score MatMuls (off by default: it rules out TensorRT's fused attention). fp16 uses
    ONNX Runtime's converter; bf16 re-types its result (same structure, bfloat16 instead of float16).
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if precision not in ("fp16", "bf16"):
        raise ValueError(f"lower_precision_onnx: precision must be fp16 or bf16, got {precision!r}")
    src, dst = Path(src), Path(dst)
    # Shape inference through a file: works past protobuf's 2 GB limit (the 0.9B graphs), and
    # the converter needs every tensor's type to put Casts in front of the fp32 islands.
    inferred = src.with_name(f".{src.stem}.{precision}.inferred.onnx")  # next to src: external data resolves
    onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
    try:
        model = onnx.load(str(inferred))
    finally:
        inferred.unlink(missing_ok=True)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    target = "tensor(float16)" if precision == "fp16" else "tensor(bfloat16)"
    blocked_ops = set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS) | ops_without_type(model, target)
    blocked_nodes: list[str] = []
    if fp32_attention:
        blocked_ops |= set(ATTENTION_OPS)
        blocked_nodes = attention_score_matmuls(model)
    low = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                   op_block_list=sorted(blocked_ops),
                                   node_block_list=blocked_nodes, force_fp16_initializers=True)
    if precision == "bf16":
        _retype_fp16_to_bf16(low)
    _toposort(low.graph)  # the converter appends its Cast nodes at the end; ONNX (and TensorRT) need order
    # The converter's value_info can contradict the graph (a Constant's value_float is always
    # float32 whatever it records); consumers infer intermediate types themselves.
    del low.graph.value_info[:]
    onnx.save_model(low, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data", size_threshold=1024)
    return dst


def ops_without_type(model: Any, tensor_type: str) -> set[str]:
    """Op types of ``model`` whose schema (at the model's opset) takes floats but not ``tensor_type``.

    E.g. Conv has no bfloat16 before opset 22: those nodes stay fp32 instead of making the graph invalid.
    """
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 20)
    out = set()
    for op in {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}:
        try:
            schema = onnx.defs.get_schema(op, opset)
        except Exception:  # noqa: BLE001 - unknown op: leave it to the converter
            continue
        for c in schema.type_constraints:
            allowed = set(c.allowed_type_strs)
            if "tensor(float)" in allowed and tensor_type not in allowed:
                out.add(op)
    return out


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (Kahn)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    # The converter inserts one Cast per (tensor, blocked consumer) under the same output name:
    # identical duplicates are dropped (a real name clash between different nodes is an error).
    seen: dict[str, bytes] = {}
    pending = []
    for node in graph.node:
        sig = node.SerializeToString()
        clash = [o for o in node.output if o in seen]
        if clash:
            if all(seen[o] == sig for o in clash) and len(clash) == len(node.output):
                continue
            raise ValueError(f"two different nodes produce {clash}")
        for o in node.output:
            seen[o] = sig
        pending.append(node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in available})[:5]
            raise ValueError(f"graph has a cycle or dangling inputs: {missing}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _retype_fp16_to_bf16(model: Any) -> None:
    import numpy as np
    from onnx import TensorProto, numpy_helper

    def to_bf16(t: Any) -> None:
        if t.data_type != TensorProto.FLOAT16:
            return
        arr = numpy_helper.to_array(t).astype(np.float32)
        bits = arr.view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        name, dims = t.name, list(t.dims)
        t.Clear()
        t.name, t.data_type = name, TensorProto.BFLOAT16
        t.dims.extend(dims)
        t.raw_data = rounded.tobytes()

    def fix_type(tp: Any) -> None:
        if tp.HasField("tensor_type") and tp.tensor_type.elem_type == TensorProto.FLOAT16:
            tp.tensor_type.elem_type = TensorProto.BFLOAT16

    for init in model.graph.initializer:
        to_bf16(init)
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        fix_type(vi.type)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
            if attr.name == "dtype" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
            if attr.type == attr.TENSOR:
                to_bf16(attr.t)


# ------------------------------------------------------------------------------------ engines


@dataclass
class BuildResult:
    file: str
    seconds: float
    bytes: int
    fp32_layers: int
    profiles: tuple[tuple[int, int, int], ...] = ()


def _pin_fp32_layers(trt: Any, network: Any, fp32_attention: bool = False) -> int:
    """TensorRT 10 + FP16/BF16 flags: keep norms and reductions (with ``fp32_attention`` also softmax
    and q.k^T) in fp32."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(k).name: i for i, layer in enumerate(layers) for k in range(layer.num_outputs)}
    kinds = (trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE) + ((trt.LayerType.SOFTMAX,) if fp32_attention else ())
    pinned = {i for i, layer in enumerate(layers) if layer.type in kinds}
    for layer in layers if fp32_attention else ():
        if layer.type != trt.LayerType.SOFTMAX:
            continue
        frontier = [layer.get_input(0)]
        for _ in range(6):
            nxt = []
            for tensor in frontier:
                idx = producer.get(tensor.name) if tensor is not None else None
                if idx is None:
                    continue
                prod = layers[idx]
                if prod.type == trt.LayerType.MATRIX_MULTIPLY:
                    pinned.add(idx)
                elif prod.type in (trt.LayerType.ELEMENTWISE, trt.LayerType.SHUFFLE, trt.LayerType.CAST):
                    nxt.extend(prod.get_input(j) for j in range(prod.num_inputs))
            frontier = nxt
    floats = (trt.float32, trt.float16, trt.bfloat16)
    count = 0
    for i in sorted(pinned):
        layer = layers[i]
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        if not any(t is not None and t.dtype in floats for t in ins):
            continue  # e.g. a reduction over int64 shape values: nothing to keep in fp32
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            if layer.get_output(k).dtype in floats:
                layer.set_output_type(k, trt.float32)
        count += 1
    return count


def build_engine(onnx_path: Path, inputs: list, plan_path: Path, *, precision: str, max_batch: int,
                 opt_batch: Optional[int] = None, workspace_gb: float = 8.0, timing_cache: Optional[Path] = None,
                 strongly_typed: Optional[bool] = None, fp32_attention: bool = False) -> BuildResult:
    """Build and serialise one engine; ``inputs`` are the graph's TensorSpecs (batch axis first).

    One optimisation profile per batch bucket (:func:`xvla.core.batch_profiles.batch_profiles`).
    """
    from xvla.core.batch_profiles import batch_profiles

    trt = require_tensorrt()
    major = trt_major(trt)
    strongly = (major >= 11) if strongly_typed is None else bool(strongly_typed)
    if major >= 11 and not strongly:
        raise TensorRTBuildError(f"TensorRT {trt.__version__} builds strongly typed networks only")
    t0 = time.perf_counter()
    src = Path(onnx_path)
    if strongly and precision in ("fp16", "bf16"):
        src = lower_precision_onnx(src, plan_path.parent / f"{src.stem}.{precision}.onnx", precision,
                                   fp32_attention=fp32_attention)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{src.name}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    pinned = 0
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and strongly typed networks honour it too: fp32 must mean fp32.
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly and precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_layers(trt, network, fp32_attention=fp32_attention)
    profiles = batch_profiles(max_batch, opt_batch)
    for lo, opt, hi in profiles:
        profile = builder.create_optimization_profile()
        for spec in inputs:
            rest = tuple(int(d) for d in spec.shape[1:])
            profile.set_shape(spec.name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"{onnx_path.name}: TensorRT could not build an engine (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if cache is not None and timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    if src != Path(onnx_path):  # the low-precision copy only served the build
        for p in (src, src.with_name(src.name + ".data")):
            p.unlink(missing_ok=True)
    return BuildResult(plan_path.name, time.perf_counter() - t0, plan_path.stat().st_size, pinned, tuple(profiles))


def build_bundle_engines(bundle: Path, graphs: Mapping[str, Any], opts: "ExportOptions", reporter: "Reporter", *,
                         reference: Optional[Mapping[str, Any]], inputs: Optional[Mapping[str, Any]],
                         action_space: Mapping[str, Any]) -> dict[str, Any]:
    """Build every graph's engine into ``engines/``, run the parity gate on them -> manifest section.

    ``reference``/``inputs`` are the PyTorch chunk and its inputs from the ONNX gate (None with
    ``--no-parity``: the engines are then not checked either, and the section says so).
    """
    from xvla.export.errors import ParityError
    from xvla.export.policies.xvla.parity import check_parity, engine_chunk
    from xvla.export.tensorrt_runner import TrtRunner

    trt = require_tensorrt()
    gpu = gpu_properties()
    cache = Path(opts.trt_timing_cache) if opts.trt_timing_cache else bundle / "engines" / "timing.cache"
    strongly = trt_major(trt) >= 11
    section: dict[str, Any] = {"version": str(trt.__version__), "gpu": gpu["gpu"],
                               "compute_capability": gpu["compute_capability"], "precision": opts.precision,
                               "strongly_typed": strongly, "max_batch": int(opts.max_batch), "engines": {},
                               "parity": None}
    for name, g in graphs.items():
        plan = bundle / "engines" / f"{name}.plan"
        with reporter.step(f"TensorRT {name}.plan ({opts.precision})") as rec:
            res = build_engine(bundle / g.file, g.inputs, plan, precision=opts.precision, max_batch=opts.max_batch,
                               opt_batch=opts.trt_opt_batch, workspace_gb=opts.trt_workspace_gb,
                               timing_cache=cache, strongly_typed=strongly,
                               fp32_attention=bool(getattr(opts, "trt_fp32_attention", False)))
            rec.detail = f"{res.bytes / 2**20:.1f} MiB, {res.fp32_layers} layers pinned to fp32"
        section["engines"][name] = {"file": f"engines/{name}.plan", "build_seconds": round(res.seconds, 2),
                                    "bytes": res.bytes}
        section["profiles"] = [list(p) for p in res.profiles]  # the same buckets for every graph
    if reference is None or inputs is None:
        reporter.warn("TensorRT parity skipped (--no-parity)")
    else:
        precision = "trt-fp32" if opts.precision == "fp32" else opts.precision
        with reporter.step("parity: TensorRT chunk") as rec:
            runner = TrtRunner(trt, bundle, {n: e["file"] for n, e in section["engines"].items()})
            try:
                got = engine_chunk(runner, graphs, inputs, opts.steps, action_space)
            finally:
                runner.close()
            report = check_parity(reference, got, backend="tensorrt", steps=opts.steps, seed=opts.parity_seed,
                                  batch=opts.parity_batch, precision=precision)
            a = report.outputs["actions"]
            rec.detail = f"actions max_abs {a.max_abs:.2e} cosine {a.cosine:.6f} {'ok' if report.passed else 'FAIL'}"
        section["parity"] = report.to_dict()
        if not report.passed:
            raise ParityError(report)
    return section
