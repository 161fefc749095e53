"""A torch-only bundle: manifest + tokenizer of a seeded preset, no ONNX export (for the GPU device check).

Exporting the 0.9B graphs takes far longer than a device check may run, and the torch engines
(``--providers torch-*``) rebuild the model from ``manifest.source`` anyway. The graph entries carry
the real input/output specs (traced on the meta device); their files are EMPTY placeholders and the
source says ``torch_only: true``: such a bundle loads only with a torch provider (ONNX Runtime refuses
the empty files with its own error). Written to scratch folders, never shipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_torch_only_bundle(preset: str, out: Path, seed: int = 0, max_batch: int = 8, steps: int = 10) -> Path:
    """``preset`` is a benchmark preset name (benchmarks.presets); returns the bundle folder."""
    import torch

    from xvla.benchmarks.presets import get_preset
    from xvla.export.policies.xvla.bundle_writer import DEFAULT_CAMERAS, ExportOptions, LoadedModel, _tokenizer_step
    from xvla.export.policies.xvla.graphs import GraphOptions, build_graph_specs
    from xvla.export.policies.xvla.manifest import ManifestInputs, build_manifest, write_manifest
    from xvla.export.policies.xvla.onnx_export import ExportedGraph
    from xvla.export.progress import Reporter

    config_preset = get_preset(preset).config_preset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from xvla.export.policies.xvla.checkpoint import skip_weight_init
    from xvla.export.policies.xvla.model import XVLA

    with skip_weight_init(), torch.no_grad():  # shapes only: uninitialised weights, one traced forward
        model = XVLA(get_preset(preset).config()).eval()
        specs = build_graph_specs(model, GraphOptions())
    graphs: dict[str, Any] = {}
    for name, spec in specs.items():
        (out / f"{name}.onnx").write_bytes(b"")  # placeholder: the torch engines never read it
        graphs[name] = ExportedGraph(name, f"{name}.onnx", [], list(spec.inputs), list(spec.outputs), 20)
    source = {"kind": "preset", "preset": config_preset, "seed": int(seed), "torch_only": True}
    loaded = LoadedModel(model, config_preset, source)
    tok = _tokenizer_step(out, loaded, ExportOptions(), Reporter())
    info = ManifestInputs(model_name=config_preset, precision="fp32", max_batch=max_batch, default_steps=steps,
                          camera_names=list(DEFAULT_CAMERAS), image_size=(224, 224), max_text_len=50,
                          tokenizer=tok, source=source)
    write_manifest(out, build_manifest(model, graphs, info, opset=20))
    return out
