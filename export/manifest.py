"""manifest.json: everything the runtime needs to know about a bundle, without torch.

The layout is the contract in docs/bundle.md; ``runtime/manifest_schema.json`` is its JSON
schema (it lives in the runtime package because the runtime validates bundles at load). This
module builds the document from a model and the exported graphs, hashes every file, and
validates the result against the same schema before it is written, so an exporter bug shows
up here and not on the robot.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

FORMAT_VERSION = 1
POLICY_KIND = "xvla"
EXPORTER_NAME = "xvla-export"
MANIFEST_NAME = "manifest.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# X-VLA / R1Pro view order for three cameras (the model's, not the dataset's).
DEFAULT_CAMERAS = ("head", "left_wrist", "right_wrist")
# BEHAVIOR-1K stores [left_wrist, right_wrist, head]; the geometry path remaps [1, 2, 0].
DATASET_VIEW_ORDER = ("left_wrist", "right_wrist", "head")
R1PRO_DOMAIN_ID = 19
R1PRO_RAW_PROPRIO_DIM = 256


class ManifestError(ValueError):
    """The manifest does not validate against the schema (names the field)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_bundle_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except manifest.json, keyed by POSIX relative path."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def schema_path() -> Path:
    return Path(str(resources.files("xvla.runtime").joinpath("manifest_schema.json")))


def load_schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text())


def validate_manifest(manifest: Mapping[str, Any]) -> None:
    """Raise ManifestError naming the first offending field (``manifest.graphs.vlm.file: ...``)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"manifest{'.' + where if where else ''}: {first.message}{more}")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xvla-runtime")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def is_r1pro(config: Any) -> bool:
    """The BEHAVIOR-1K R1Pro action layout: auto mode, 23-d, its delta dims."""
    from .model.config import R1PRO_ACTION_DIM, R1PRO_IDX_FOR_DELTA

    return (config.action_mode == "auto" and int(config.real_action_dim) == R1PRO_ACTION_DIM
            and tuple(config.idx_for_delta) == tuple(R1PRO_IDX_FOR_DELTA))


def vocabulary(names: Optional[Sequence[str]], size: int, prefix: str) -> list[dict[str, Any]]:
    """[{"id", "name"}] for ids 0..size-1; placeholder names where the checkpoint ships none."""
    names = list(names or [])
    if len(names) > size:
        raise ValueError(f"{prefix} vocabulary has {len(names)} names for {size} ids")
    return [{"id": i, "name": names[i] if i < len(names) else f"{prefix}_{i}"} for i in range(size)]


@dataclass
class ManifestInputs:
    """What the bundle writer knows besides the model and the graphs."""

    model_name: str
    precision: str = "fp32"
    max_batch: int = 8
    default_steps: int = 10
    camera_names: Sequence[str] = DEFAULT_CAMERAS
    image_size: tuple[int, int] = (224, 224)
    max_text_len: int = 50
    resize_filter: str = "bicubic"
    skill_names: Optional[Sequence[str]] = None
    task_names: Optional[Sequence[str]] = None
    domains: Optional[Mapping[str, int]] = None
    tokenizer: Optional[dict[str, Any]] = None
    source: Optional[dict[str, Any]] = None  # where the weights came from (checkpoint path or preset+seed)
    extra: dict[str, Any] = field(default_factory=dict)


def build_manifest(model: Any, graphs: Mapping[str, Any], info: ManifestInputs, *, opset: int) -> dict[str, Any]:
    """The manifest without ``files``/``parity``/``tensorrt`` (filled in once those exist)."""
    import onnx
    import onnxruntime
    import torch

    exporter_version = _package_version()
    cfg = model.config
    space = dict(model.action_space.describe())
    space["num_actions"] = int(cfg.num_actions)
    r1pro = is_r1pro(cfg)
    text = cfg.florence_config.text_config
    views = len(info.camera_names)
    geometry = None
    if "geometry" in graphs:
        geometry = {"process_res": int(info.image_size[0]), "intrinsics_scale": "per_axis",
                    "dataset_view_order": list(DATASET_VIEW_ORDER)}
    proprio: dict[str, Any] = {"dim": int(space["dim"])}
    if r1pro:
        proprio["r1pro_raw_dim"] = R1PRO_RAW_PROPRIO_DIM
    has_prompts = "task_id" in {s.name for s in graphs["action"].inputs}
    has_skill_head = "skill_logits" in {s.name for s in graphs["vlm"].outputs}
    skills = vocabulary(info.skill_names, int(cfg.num_skills), "skill") if (has_prompts or has_skill_head) else []
    tasks = vocabulary(info.task_names, int(cfg.num_tasks), "task") if has_prompts else []
    domains = dict(info.domains) if info.domains else (
        {"default": R1PRO_DOMAIN_ID, "r1pro": R1PRO_DOMAIN_ID} if r1pro else {"default": 0})
    bad = {k: v for k, v in domains.items() if not 0 <= int(v) < int(cfg.num_domains)}
    if bad:
        raise ValueError(f"domains {bad} outside [0, num_domains={cfg.num_domains})")

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "policy_kind": POLICY_KIND,
        "exporter": {"name": EXPORTER_NAME, "version": exporter_version, "torch": torch.__version__.split("+")[0],
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "onnx_opset": int(opset),
                     "python": platform.python_version()},
        "model_name": info.model_name,
        "source": info.source or {},
        "model_config": cfg.to_dict(),
        "action_space": space,
        "preprocess": {
            "image_size": [int(info.image_size[0]), int(info.image_size[1])],
            "resize_filter": info.resize_filter,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "num_views": views,
            "camera_names": list(info.camera_names),
            "max_text_len": int(info.max_text_len),
            "pad_token_id": int(text.pad_token_id),
            "bos_token_id": int(text.bos_token_id),
            "eos_token_id": int(text.eos_token_id),
            "geometry": geometry,
            "proprio": proprio,
        },
        "denoising": {"default_steps": int(info.default_steps), "schedule": "x0_reflow"},
        "skills": skills,
        "tasks": tasks,
        "domains": {k: int(v) for k, v in domains.items()},
        "tokenizer": info.tokenizer,
        "graphs": {name: g.manifest_entry() for name, g in graphs.items()},
        "precision": info.precision,
        "max_batch": int(info.max_batch),
        "files": {},
        "parity": None,
        "tensorrt": None,
    }
    manifest.update(info.extra)
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Hash every file, validate, write ``manifest.json`` (the files section is always recomputed)."""
    manifest["files"] = hash_bundle_files(root)
    validate_manifest(manifest)
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a bundle folder")
    return json.loads(path.read_text())
