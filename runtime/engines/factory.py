"""Picks the engine for a bundle's graph from the provider flags (one decision, made at startup)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from xvla.runtime.engines.base import Engine, EngineError

if TYPE_CHECKING:
    from xvla.runtime.bundle import Bundle

# Flags accepted by --providers: ONNX Runtime providers, native TensorRT plans from the bundle, and the
# PyTorch engines (torch-cpu, torch-cuda[-fp32|-fp16|-bf16]; provided by the policy kind, lazily imported: e.g. runtime/policies/xvla/torch_engine.py).
PROVIDER_FLAGS = ("cpu", "cuda", "tensorrt", "trt-native")
TORCH_FLAGS = ("torch-cpu", "torch-cuda") + tuple(f"torch-{d}-{p}" for d in ("cpu", "cuda")
                                                  for p in ("fp32", "fp16", "bf16"))


def parse_providers(spec: str | Sequence[str] | None) -> list[str]:
    """'cuda,cpu' or ['cuda', 'cpu'] -> ['cuda', 'cpu']; None -> ['cpu']. Unknown flags are an error."""
    if spec is None:
        return ["cpu"]
    items = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    bad = [p for p in items if p not in PROVIDER_FLAGS + TORCH_FLAGS]
    if bad:
        raise EngineError(f"providers: unknown {bad}; choose from {list(PROVIDER_FLAGS) + ['torch-cpu', 'torch-cuda']}")
    if "trt-native" in items and len(items) > 1:
        raise EngineError("providers: trt-native cannot be combined with onnxruntime providers")
    if any(p in TORCH_FLAGS for p in items) and len(items) > 1:
        raise EngineError("providers: a torch provider runs every graph; it cannot be combined with others")
    return items or ["cpu"]


def is_torch(providers: Sequence[str]) -> bool:
    return len(providers) == 1 and providers[0] in TORCH_FLAGS


def ort_trt_cache_dir(bundle: "Bundle") -> Path:
    """Where ONNX Runtime's TensorRT provider caches engines: outside the bundle (which may be read-only and is
    hash-checked), keyed by the bundle's file hashes so a re-export never reuses stale engines."""
    key = hashlib.sha256(json.dumps(bundle.manifest.get("files", {}), sort_keys=True).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XVLA_CACHE_DIR", Path.home() / ".cache" / "xvla"))
    return base / "ort_trt" / f"{bundle.name}-{key}"


def create_engine(
    bundle: "Bundle",
    graph: str,
    providers: Sequence[str] = ("cpu",),
    allow_fallback: bool = False,
    intra_op_threads: int = 0,
    route: str = "",
) -> Engine:
    """An engine for ``graph`` of ``bundle``: native TensorRT when 'trt-native' is asked, else ONNX Runtime."""
    providers = parse_providers(list(providers))
    precision = str(bundle.manifest.get("precision", "fp32"))
    if providers == ["trt-native"]:
        from xvla.runtime.engines.tensorrt_engine import TensorRTEngine, import_tensorrt, local_gpu_name

        trt, _ = import_tensorrt()
        bundle.check_tensorrt_compat(trt.__version__, local_gpu_name())
        trt_precision = str((bundle.manifest.get("tensorrt") or {}).get("precision", precision))
        return TensorRTEngine(bundle.tensorrt_plan(graph), graph, max_batch=bundle.max_batch,
                              precision=trt_precision, route=route)
    from xvla.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(
        bundle.graph_file(graph),
        graph,
        providers=providers,
        allow_fallback=allow_fallback,
        intra_op_threads=intra_op_threads,
        max_batch=bundle.max_batch,
        precision=precision,
        trt_cache_dir=ort_trt_cache_dir(bundle),
        route=route,
        input_shapes=graph_input_shapes(bundle, graph) if "tensorrt" in providers else None,
    )


def graph_input_shapes(bundle: "Bundle", graph: str) -> dict[str, list]:
    """The manifest's input shapes of ``graph`` (batch axis first): the TensorRT provider's profiles."""
    return {str(i["name"]): list(i["shape"]) for i in (bundle.graphs.get(graph) or {}).get("inputs", [])}
