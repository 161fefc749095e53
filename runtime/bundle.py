"""Loads and checks a bundle folder (docs/bundle.md): the manifest, its schemas, every file's sha256.

A bundle is the only thing the runtime trusts about a model. Checking it up front turns
"the robot moved strangely" into "vlm.onnx was modified after export" at startup. This class
knows only the generic top level of the manifest; a policy kind reads its own ``policy`` block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvla.core.manifest import BundleError, read_manifest, upgrade_manifest, validate_manifest, verify_files

log = logging.getLogger(__name__)

__all__ = ["Bundle", "BundleError"]


@dataclass
class Bundle:
    """A checked bundle: its folder and (format-2) manifest, with accessors for the generic fields."""

    root: Path
    manifest: dict[str, Any]

    def __post_init__(self) -> None:
        self.manifest = upgrade_manifest(self.manifest)

    @classmethod
    def load(cls, root: str | Path, verify_hashes: bool = True) -> "Bundle":
        root = Path(root).expanduser().resolve()
        manifest = upgrade_manifest(read_manifest(root))
        validate_manifest(manifest)
        if verify_hashes:
            verify_files(root, manifest.get("files", {}))
        for name, graph in manifest["graphs"].items():
            if not (root / graph["file"]).is_file():
                raise BundleError(f"manifest.graphs.{name}.file: {graph['file']} not found in {root}")
        return cls(root=root, manifest=manifest)

    # ------------------------------------------------------------------ generic accessors
    @property
    def name(self) -> str:
        return str(self.manifest.get("model_name", self.root.name))

    @property
    def kind(self) -> str:
        return str(self.manifest["policy_kind"])

    @property
    def policy(self) -> dict[str, Any]:
        """The kind-specific block (validated by schemas/policy_<kind>.json)."""
        return self.manifest["policy"]

    @property
    def embodiment(self) -> str | None:
        return self.manifest.get("embodiment")

    @property
    def graphs(self) -> dict[str, Any]:
        return self.manifest["graphs"]

    @property
    def action(self) -> dict[str, Any]:
        return self.manifest["action"]

    @property
    def dim(self) -> int:
        return int(self.action["dim"])

    @property
    def horizon(self) -> int:
        return int(self.action["horizon"])

    @property
    def gripper_dims(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.action.get("gripper_dims", []))

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.action.get("names", []) or [])

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.manifest["cameras"]["names"])

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.manifest["cameras"]["image_size"]
        return int(h), int(w)

    @property
    def needs_pose(self) -> bool:
        return bool(self.manifest["cameras"].get("needs_pose", False))

    @property
    def proprio_dims(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.manifest["proprio"]["dims"])

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
    def skills(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("skills") or [])

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("tasks") or [])

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
