"""Loads and checks a bundle folder (docs/bundle.md): the manifest, its schema, every file's sha256.

A bundle is the only thing the runtime trusts about a model. Checking it up front turns
"the robot moved strangely" into "vlm.onnx was modified after export" at startup.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_FORMAT_VERSIONS = (1,)
SCHEMA_PATH = Path(__file__).resolve().parent / "manifest_schema.json"


class BundleError(ValueError):
    """The bundle is missing, malformed, tampered with or incompatible with this runtime."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def validate_manifest(manifest: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Validates against runtime/manifest_schema.json; the error names the offending field path."""
    fmt = manifest.get("format_version")
    if fmt not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"manifest.format_version {fmt!r} is not supported by this runtime (supports {SUPPORTED_FORMAT_VERSIONS}); "
            "re-export the bundle or upgrade xvla-runtime"
        )
    if not schema_path.is_file():
        log.warning("manifest schema %s not found: skipping schema validation", schema_path)
        return
    import jsonschema

    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "manifest." + ".".join(str(p) for p in first.absolute_path) if first.absolute_path else "manifest"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{where}: {first.message}{more}")


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Every listed file must exist and hash to its recorded sha256."""
    for rel, expected in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise BundleError(f"bundle file missing: {rel} (listed in manifest.files)")
        got = sha256_file(path)
        if got != expected:
            raise BundleError(
                f"bundle file tampered or corrupt: {rel} has sha256 {got[:16]}..., manifest.files says {expected[:16]}..."
            )


@dataclass
class Bundle:
    """A checked bundle: its folder and manifest, with accessors for what the runtime needs."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path, verify_hashes: bool = True) -> "Bundle":
        root = Path(root).expanduser().resolve()
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise BundleError(f"not a bundle: {mpath} not found (export one with: xvla-export --preset tiny --out DIR)")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{mpath}: invalid JSON: {exc}") from exc
        validate_manifest(manifest)
        if verify_hashes:
            verify_files(root, manifest.get("files", {}))
        for name, graph in manifest["graphs"].items():
            if not (root / graph["file"]).is_file():
                raise BundleError(f"manifest.graphs.{name}.file: {graph['file']} not found in {root}")
        return cls(root=root, manifest=manifest)

    # ------------------------------------------------------------------ accessors
    @property
    def name(self) -> str:
        return str(self.manifest.get("model_name", self.root.name))

    @property
    def action_space(self) -> dict[str, Any]:
        return self.manifest["action_space"]

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.manifest["preprocess"]

    @property
    def graphs(self) -> dict[str, Any]:
        return self.manifest["graphs"]

    @property
    def horizon(self) -> int:
        return int(self.action_space["num_actions"])

    @property
    def dim(self) -> int:
        return int(self.action_space["dim"])

    @property
    def model_dim(self) -> int:
        return int(self.action_space.get("model_dim", self.dim))

    @property
    def max_batch(self) -> int:
        return int(self.manifest.get("max_batch", 1) or 1)

    @property
    def batch_sizes(self) -> list[int]:
        """The bundle's batch list: the tops of its batch buckets (TensorRT profiles), warm-up sizes."""
        from xvla.core.batch_profiles import batch_list

        profiles = (self.manifest.get("tensorrt") or {}).get("profiles")
        if profiles:
            return [int(p[2]) for p in profiles]
        return batch_list(self.max_batch)

    @property
    def default_steps(self) -> int:
        return int(self.manifest.get("denoising", {}).get("default_steps", 10))

    @property
    def skills(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("skills") or [])

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("tasks") or [])

    @property
    def has_geometry(self) -> bool:
        return "geometry" in self.graphs

    @cached_property
    def action_inputs(self) -> set[str]:
        return {i["name"] for i in self.graphs["action"].get("inputs", [])}

    @cached_property
    def vlm_outputs(self) -> set[str]:
        return {o["name"] for o in self.graphs["vlm"].get("outputs", [])}

    @property
    def has_skill_head(self) -> bool:
        return "skill_logits" in self.vlm_outputs

    @property
    def has_task_prompts(self) -> bool:
        return "task_id" in self.action_inputs

    @property
    def num_domains(self) -> int:
        return int(self.manifest.get("model_config", {}).get("num_domains", 30))

    def graph_file(self, graph: str) -> Path:
        if graph not in self.graphs:
            raise BundleError(f"bundle {self.root} has no graph {graph!r} (has {sorted(self.graphs)})")
        return self.root / self.graphs[graph]["file"]

    def tensorrt_plan(self, graph: str) -> Path:
        trt = self.manifest.get("tensorrt") or {}
        engines = trt.get("engines") or {}
        entry = engines.get(graph)
        rel = entry.get("file") if isinstance(entry, dict) else entry
        path = self.root / (rel or f"engines/{graph}.plan")
        if not path.is_file():
            raise BundleError(f"bundle {self.root} has no TensorRT engine for {graph!r} (export with --trt)")
        return path

    def check_tensorrt_compat(self, trt_version: str, gpu_name: str | None) -> None:
        """TensorRT plans only run on the TensorRT version and GPU model they were built for: refuse otherwise."""
        trt = self.manifest.get("tensorrt")
        if not trt:
            raise BundleError(f"bundle {self.root} has no TensorRT engines (manifest.tensorrt is null); export with --trt")
        built_version = str(trt.get("version", ""))
        if built_version and built_version != trt_version:
            raise BundleError(
                f"manifest.tensorrt.version: engines were built with TensorRT {built_version} but this machine has "
                f"{trt_version}; rebuild the engines here (xvla-export --trt) or install tensorrt=={built_version}"
            )
        built_gpu = str(trt.get("gpu", ""))
        if built_gpu and gpu_name is not None and built_gpu != gpu_name:
            raise BundleError(
                f"manifest.tensorrt.gpu: engines were built on {built_gpu!r} but this machine's GPU is {gpu_name!r}; "
                "TensorRT plans are GPU-specific: rebuild them on this machine (xvla-export --trt)"
            )
