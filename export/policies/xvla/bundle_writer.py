"""Checkpoint (or model) -> bundle folder: graphs, tokenizer, optional TensorRT engines, manifest.

The bundle is assembled in a staging folder next to the destination and moved into place
only after the parity gate passed, so a folder with a manifest.json is always a bundle whose
engines agree with the model. A failed gate leaves ``<out>.failed/`` (graphs plus
``parity_report.json``) for inspection.

Public API::

    from xvla.export.policies.xvla.bundle_writer import export_bundle
    export_bundle("path/to/checkpoint", "bundles/mine")            # or an XVLA instance
    export_bundle(model, out, precision="fp16", trt=True, max_batch=8)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from xvla.export.errors import BundleExportError, ParityError
from xvla.export.policies.xvla.graphs import GraphOptions, build_graph_specs, traced_parts
from xvla.export.policies.xvla.manifest import (
    DEFAULT_CAMERAS,
    MANIFEST_NAME,
    ManifestInputs,
    build_manifest,
    write_manifest,
)
from xvla.export.policies.xvla.onnx_export import (
    DEFAULT_OPSET,
    TemplateCache,
    TraceRequest,
    export_graph,
    graph_config_part,
    onnx_file_size,
    pool_started,
    rebuildable_from_config,
    template_key,
    trace_parallel,
)
from xvla.export.policies.xvla.parity import (
    OrtRunner,
    ParityReport,
    check_parity,
    engine_chunk,
    parity_inputs,
    torch_chunk,
)
from xvla.export.progress import Reporter, human_bytes

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
# Vocabularies a checkpoint may ship next to config.json (list of names, or {"id": name}).
SKILLS_FILE = "skills.json"
TASKS_FILE = "tasks.json"
DOMAINS_FILE = "domains.json"


@dataclass
class ExportOptions:
    precision: str = "fp32"  # for TensorRT / accelerator providers; ONNX graphs are always fp32
    max_batch: int = 8
    opset: int = DEFAULT_OPSET
    steps: int = 10  # default denoising steps recorded in the manifest and used by the gate
    parity: bool = True
    parity_seed: int = 0
    parity_batch: int = 2
    parity_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    unrolled: bool = False  # also export the ``chunk`` graph (loop unrolled for ``steps``)
    trt: bool = False
    trt_workspace_gb: float = 8.0
    trt_timing_cache: Optional[Path] = None
    trt_opt_batch: Optional[int] = None  # None: each batch bucket's top (xvla.core.batch_profiles)
    trt_fp32_attention: bool = False
    num_views: int = 3
    camera_names: Optional[Sequence[str]] = None
    image_size: tuple[int, int] = (224, 224)
    max_text_len: int = 50
    tokenizer_dir: Optional[Path] = None
    build_tokenizer: bool = False  # build the tiny stand-in tokenizer when the checkpoint ships none
    cache_dir: Optional[Path] = None  # TemplateCache: reuse graphs of an architecture exported before
    jobs: Optional[int] = None  # graphs traced in parallel processes (None: one per graph, up to the CPU count)
    model_name: Optional[str] = None
    domains: Optional[dict[str, int]] = None
    overwrite: bool = True
    verbose: bool = False

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise BundleExportError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_batch < 1:
            raise BundleExportError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.steps < 1:
            raise BundleExportError(f"steps must be >= 1, got {self.steps}")
        if self.num_views < 1:
            raise BundleExportError(f"num_views must be >= 1, got {self.num_views}")
        if self.camera_names is not None and len(self.camera_names) != self.num_views:
            raise BundleExportError(f"camera_names has {len(self.camera_names)} names for num_views={self.num_views}")
        if self.trt_opt_batch is not None and not 1 <= self.trt_opt_batch <= self.max_batch:
            raise BundleExportError(f"trt_opt_batch must be in [1, max_batch={self.max_batch}]")
        if self.parity_batch < 1:
            raise BundleExportError(f"parity_batch must be >= 1, got {self.parity_batch}")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    name: str
    source: dict[str, Any]
    checkpoint_dir: Optional[Path] = None
    vocab: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ inputs


def _read_vocab_file(path: Path) -> Optional[list[str]]:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        n = max(int(k) for k in data) + 1 if data else 0
        names = [f"#{i}" for i in range(n)]
        for k, v in data.items():
            names[int(k)] = str(v)
        return names
    if isinstance(data, list):
        return [str(x["name"]) if isinstance(x, dict) else str(x) for x in data]
    raise BundleExportError(f"{path}: expected a list of names or an {{id: name}} object")


def load_model(model_or_dir: Union[str, Path, torch.nn.Module], name: Optional[str] = None) -> LoadedModel:
    if isinstance(model_or_dir, torch.nn.Module):
        return LoadedModel(model_or_dir.eval(), name or "model", {"kind": "in-memory"})
    path = Path(model_or_dir).expanduser()
    if not path.is_dir():
        raise BundleExportError(f"CHECKPOINT_DIR {path} is not a folder")
    if not (path / "config.json").is_file():
        raise BundleExportError(f"CHECKPOINT_DIR {path} has no config.json (expected an X-VLA checkpoint folder)")
    from xvla.export.policies.xvla.model import XVLA

    model = XVLA.from_pretrained(path).eval()
    vocab: dict[str, Any] = {}
    for key, fname in (("skills", SKILLS_FILE), ("tasks", TASKS_FILE)):
        names = _read_vocab_file(path / fname)
        if names is not None:
            vocab[key] = names
    if (path / DOMAINS_FILE).is_file():
        vocab["domains"] = {str(k): int(v) for k, v in json.loads((path / DOMAINS_FILE).read_text()).items()}
    return LoadedModel(model, name or path.resolve().name, {"kind": "checkpoint", "path": str(path.resolve())},
                       path, vocab)


def preset_model(preset: str, seed: int = 0) -> LoadedModel:
    """A seeded random model of a named preset (demos, tests, latency work without a checkpoint)."""
    from xvla.export.policies.xvla.model import XVLA, XVLAConfig

    cfg = XVLAConfig.preset(preset)
    torch.manual_seed(seed)
    model = XVLA(cfg).eval()
    vocab: dict[str, Any] = {}
    if preset.endswith("-r1pro-v20"):  # BEHAVIOR task prompts: name them as the evaluator numbers them
        from xvla.core.embodiments.behavior_tasks import BEHAVIOR_2025_TASKS

        vocab["tasks"] = list(BEHAVIOR_2025_TASKS[: int(cfg.num_tasks)])
    return LoadedModel(model, preset, {"kind": "preset", "preset": preset, "seed": int(seed)}, vocab=vocab)


def _tokenizer_step(bundle: Path, loaded: LoadedModel, opts: ExportOptions, reporter: Reporter) -> Optional[dict]:
    """Copy the checkpoint's tokenizer, or build the tiny stand-in, or record that there is none."""
    out = bundle / "tokenizer"
    sources = [opts.tokenizer_dir] if opts.tokenizer_dir else []
    if loaded.checkpoint_dir is not None:
        sources.append(loaded.checkpoint_dir)
    for src in sources:
        src = Path(src)
        files = [f for f in TOKENIZER_FILES if (src / f).is_file()]
        if ("vocab.json" in files and "merges.txt" in files) or "tokenizer.json" in files:
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(src / f, out / f)
            return {"dir": "tokenizer", "files": sorted(files), "source": f"copied from {src}"}
        if opts.tokenizer_dir and src == Path(opts.tokenizer_dir):
            raise BundleExportError(f"--tokenizer {src}: no vocab.json + merges.txt or tokenizer.json there")
    if loaded.source.get("kind") == "preset" or opts.build_tokenizer:
        from xvla.export.policies.xvla.tokenizer import build_tiny_tokenizer

        vocab = int(loaded.model.config.florence_config.text_config.vocab_size)
        build_tiny_tokenizer(out, vocab_size=max(300, min(vocab, 1024)))
        files = sorted(p.name for p in out.iterdir() if p.is_file())
        return {"dir": "tokenizer", "files": files, "source": "built: tiny stand-in BPE (not a trained vocabulary)"}
    reporter.warn("the checkpoint ships no tokenizer (vocab.json + merges.txt): the bundle has none, so "
                  "clients must send token ids (input_ids); pass --tokenizer DIR to include one")
    return None


def _prepare_destination(out_dir: Path, overwrite: bool) -> Path:
    out_dir = out_dir.expanduser().resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BundleExportError(f"-o {out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
            raise BundleExportError(f"-o {out_dir}: exists, is not empty and is not a bundle; refusing to replace it")
        if (out_dir / MANIFEST_NAME).is_file() and not overwrite:
            raise BundleExportError(f"-o {out_dir}: a bundle is already there (overwrite=False)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _move_into_place(staging: Path, out_dir: Path) -> None:
    out_dir = out_dir.expanduser().resolve()
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ main entry


def export_bundle(model_or_dir: Union[str, Path, torch.nn.Module, LoadedModel], out_dir: Union[str, Path], *,
                  tokenizer_dir: Optional[Union[str, Path]] = None, precision: str = "fp32", max_batch: int = 8,
                  opset: Optional[int] = None, parity: bool = True, reporter: Optional[Reporter] = None,
                  model_name: Optional[str] = None, **options: Any) -> Path:
    """Export a checkpoint folder (or an ``XVLA`` instance) to a bundle folder; returns its path.

    Keyword ``options`` are :class:`ExportOptions` fields (``steps``, ``trt``, ``unrolled``,
    ``num_views``, ``camera_names``, ``cache_dir``, ...). Raises :class:`ParityError` when the
    engines disagree with the model, :class:`BundleExportError` for a bad request.
    """
    opts = ExportOptions(precision=precision, max_batch=max_batch, opset=opset or DEFAULT_OPSET, parity=parity,
                         tokenizer_dir=Path(tokenizer_dir) if tokenizer_dir else None, model_name=model_name,
                         **options)
    opts.check()
    reporter = reporter or Reporter()
    if opts.trt:
        from xvla.export.tensorrt_build import require_tensorrt

        require_tensorrt()  # fail in a second, not after minutes of ONNX export
    with reporter.step("load model") as rec:
        loaded = model_or_dir if isinstance(model_or_dir, LoadedModel) else load_model(model_or_dir, model_name)
        if model_name:
            loaded.name = model_name
        n_params = sum(p.numel() for p in loaded.model.parameters())
        rec.detail = f"{loaded.name}: {n_params / 1e6:.1f} M parameters"
    return _export_loaded(loaded, Path(out_dir), opts, reporter)


def _export_loaded(loaded: LoadedModel, out_dir: Path, opts: ExportOptions, reporter: Reporter) -> Path:
    model = loaded.model
    t_start = time.perf_counter()
    staging = _prepare_destination(out_dir, opts.overwrite)
    try:
        gopts = GraphOptions(num_views=opts.num_views, image_size=tuple(opts.image_size),
                             max_text_len=opts.max_text_len, chunk_steps=opts.steps if opts.unrolled else None)
        with reporter.step("trace shapes") as rec:
            specs = build_graph_specs(model, gopts)
            rec.detail = ", ".join(specs)
        parts = traced_parts(specs)
        keys = {name: template_key(spec, graph_config_part(model, name), opts.opset) for name, spec in parts.items()}
        cache = TemplateCache(opts.cache_dir) if opts.cache_dir else None
        todo = [n for n in parts if cache is None or cache.lookup(keys[n]) is None]
        jobs = opts.jobs if opts.jobs is not None else min(len(todo), os.cpu_count() or 1)
        parallel = (len(todo) > 1 and jobs > 1) or (todo and pool_started())
        if parallel and rebuildable_from_config(model):
            if cache is None:  # a private cache for this export only
                cache = TemplateCache(_scratch_dir(out_dir))
            reqs = [TraceRequest(model.config.to_dict(), n, dataclasses.asdict(gopts), opts.opset, keys[n])
                    for n in todo]
            with reporter.step(f"trace {', '.join(todo)} (worker processes)"):
                trace_parallel(reqs, cache, max(jobs, 1))
        graphs = {}
        for name, spec in specs.items():
            reused = cache is not None and all(cache.lookup(keys[p.name]) is not None for p in (spec.parts or [spec]))
            with reporter.step(f"export {name}.onnx" + (" (traced graph, this model's weights)" if reused else "")) as rec:
                graphs[name] = export_graph(spec, staging, opset=opts.opset, verbose=opts.verbose,
                                            cache=cache, cache_keys=keys)
                rec.detail = human_bytes(onnx_file_size(staging, graphs[name]))
        with reporter.step("tokenizer") as rec:
            tok = _tokenizer_step(staging, loaded, opts, reporter)
            rec.detail = tok["source"] if tok else "none"

        cams = list(opts.camera_names) if opts.camera_names else (
            list(DEFAULT_CAMERAS) if opts.num_views == len(DEFAULT_CAMERAS) else [f"view{i}" for i in range(opts.num_views)])
        info = ManifestInputs(
            model_name=loaded.name, precision=opts.precision, max_batch=opts.max_batch, default_steps=opts.steps,
            camera_names=cams, image_size=tuple(opts.image_size), max_text_len=opts.max_text_len,
            skill_names=loaded.vocab.get("skills"), task_names=loaded.vocab.get("tasks"),
            domains=opts.domains or loaded.vocab.get("domains"), tokenizer=tok, source=loaded.source)
        manifest = build_manifest(model, graphs, info, opset=opts.opset)

        report: Optional[ParityReport] = None
        reference = inputs = None
        if opts.parity:
            with reporter.step("parity: PyTorch chunk") as rec:
                inputs = parity_inputs(model, specs, batch=opts.parity_batch, seed=opts.parity_seed)
                reference = torch_chunk(model, inputs, opts.steps)
            backend = "onnxruntime-" + opts.parity_providers[0].replace("ExecutionProvider", "").lower()
            with reporter.step(f"parity: {backend} chunk") as rec:
                runner = OrtRunner(staging, graphs, providers=opts.parity_providers)
                got = engine_chunk(runner, graphs, inputs, opts.steps, manifest["policy"]["action_space"])
                report = check_parity(reference, got, backend=backend, steps=opts.steps, seed=opts.parity_seed,
                                      batch=opts.parity_batch, precision="fp32")
                a = report.outputs["actions"]
                rec.detail = f"actions max_abs {a.max_abs:.2e} cosine {a.cosine:.7f} {'ok' if report.passed else 'FAIL'}"
            manifest["parity"] = report.to_dict()
            if not report.passed:
                _fail(staging, out_dir, report)
        else:
            reporter.warn("parity gate skipped (--no-parity): nothing checks that the engines match the model")

        if opts.trt:
            from xvla.export.tensorrt_build import build_bundle_engines

            try:
                manifest["tensorrt"] = build_bundle_engines(
                    staging, graphs, opts, reporter, reference=reference, inputs=inputs,
                    action_space=manifest["policy"]["action_space"])
            except ParityError as exc:
                _fail(staging, out_dir, exc.report)
        manifest["export_seconds"] = round(time.perf_counter() - t_start, 2)
        write_manifest(staging, manifest)
        _move_into_place(staging, out_dir)
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        scratch = _scratch_dir(out_dir)
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    final = out_dir.expanduser().resolve()
    seconds = {r.name.split()[1].split(".")[0]: r.seconds for r in reporter.steps if r.name.startswith("export ")}
    reporter.summary(summary_rows(final, manifest, seconds), title=f"bundle {final}")
    return final


def _scratch_dir(out_dir: Path) -> Path:
    return out_dir.expanduser().resolve().parent / f".{Path(out_dir).name}.templates-{os.getpid()}"


def prefetch_templates(source: Union[str, Path, torch.nn.Module, LoadedModel], cache_dir: Union[str, Path],
                       jobs: Optional[int] = None, **options: Any) -> int:
    """Start tracing ``source``'s graphs into ``cache_dir`` in worker processes and return at once.

    A later :func:`export_bundle` with the same ``cache_dir`` and options waits for (or reuses)
    those traces. Lets a test session or a batch of exports trace every architecture it will
    need concurrently. Returns the number of graphs submitted.
    """
    from xvla.export.policies.xvla.onnx_export import submit_traces

    loaded = source if isinstance(source, LoadedModel) else load_model(source)
    opts = ExportOptions(cache_dir=Path(cache_dir), **options)
    opts.check()
    gopts = GraphOptions(num_views=opts.num_views, image_size=tuple(opts.image_size),
                         max_text_len=opts.max_text_len, chunk_steps=opts.steps if opts.unrolled else None)
    model = loaded.model
    if not rebuildable_from_config(model):
        return 0
    parts = traced_parts(build_graph_specs(model, gopts))
    reqs = [TraceRequest(model.config.to_dict(), n, dataclasses.asdict(gopts), opts.opset,
                         template_key(spec, graph_config_part(model, n), opts.opset)) for n, spec in parts.items()]
    return len(submit_traces(reqs, TemplateCache(Path(cache_dir)), jobs or (os.cpu_count() or 1)))


def _fail(staging: Path, out_dir: Path, report: ParityReport) -> None:
    """Keep the failed graphs for inspection as ``<out>.failed`` and raise."""
    failed = out_dir.expanduser().resolve().parent / f"{Path(out_dir).name}.failed"
    if failed.exists():
        shutil.rmtree(failed)
    (staging / "parity_report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    staging.rename(failed)
    raise ParityError(report)


def summary_rows(bundle: Path, manifest: dict, step_seconds: Optional[dict[str, float]] = None) -> list[dict]:
    """One row per graph (ONNX size, parity of what it produces, engine), then a total row."""
    step_seconds = step_seconds or {}
    parity = (manifest.get("parity") or {}).get("outputs", {})
    trt = manifest.get("tensorrt") or {}
    trt_parity = (trt.get("parity") or {}).get("outputs", {})
    produces = {"vlm": ["vlm_features", "aux_visual_inputs", "skill_logits", "progress"],
                "geometry": ["geometry_tokens"], "action": ["actions"], "chunk": ["actions_chunk"]}

    def worst(outputs: dict, graph: str) -> str:
        got = [outputs[k] for k in produces.get(graph, []) if k in outputs]
        if not got:
            return "-"
        return f"{max(o['max_abs'] for o in got):.1e} {'ok' if all(o['passed'] for o in got) else 'FAIL'}"

    rows = []
    total_bytes = 0
    for name, g in manifest["graphs"].items():
        size = sum((bundle / f).stat().st_size for f in [g["file"], *g.get("external_data", [])])
        total_bytes += size
        row = {"graph": name, "onnx": human_bytes(size), "parity max abs": worst(parity, name)}
        if trt:
            engine = (trt.get("engines") or {}).get(name)
            row["tensorrt"] = human_bytes(engine["bytes"]) if engine else "-"
            row["trt parity"] = worst(trt_parity, name) if engine else "-"
        row["time"] = f"{step_seconds.get(name, 0.0):.1f} s"
        rows.append(row)
    total = {"graph": "bundle", "onnx": human_bytes(total_bytes),
             "parity max abs": "passed" if (manifest.get("parity") or {}).get("passed") else "not run"}
    if trt:
        total["tensorrt"] = human_bytes(sum(e["bytes"] for e in trt["engines"].values()))
        total["trt parity"] = "passed" if (trt.get("parity") or {}).get("passed") else "not run"
    total["time"] = f"{manifest.get('export_seconds', 0.0):.1f} s"
    rows.append(total)
    return rows
