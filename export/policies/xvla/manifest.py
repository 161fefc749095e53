"""X-VLA's manifest: the generic top level (core/manifest.py, schemas/manifest_v2.json) plus its
``policy`` block (schemas/policy_xvla.json), built from a model and its exported graphs.

Hashing, validation and writing are the core's, so the writer and the runtime check the same
schemas and an exporter bug shows up here and not on the robot.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from xvla.core import manifest as core_manifest
from xvla.core.embodiments import r1pro
from xvla.core.manifest import FORMAT_VERSION, MANIFEST_NAME, read_manifest
from xvla.core.pose import DATASET_VIEW_ORDER, MODEL_VIEW_ORDER

__all__ = ["DEFAULT_CAMERAS", "MANIFEST_NAME", "ManifestInputs", "build_manifest", "read_manifest", "write_manifest"]

POLICY_KIND = "xvla"
EXPORTER_NAME = "xvla-export"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CAMERAS = MODEL_VIEW_ORDER  # X-VLA / R1Pro view order for three cameras (the model's, not the dataset's)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xvla-runtime")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def is_r1pro(config: Any) -> bool:
    """The BEHAVIOR-1K R1Pro action layout: auto mode, 23-d, its delta dims."""
    return (config.action_mode == "auto" and int(config.real_action_dim) == r1pro.R1PRO_ACTION_DIM
            and tuple(config.idx_for_delta) == tuple(r1pro.R1PRO_IDX_FOR_DELTA))


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
    is_r1 = is_r1pro(cfg)
    text = cfg.florence_config.text_config
    views = len(info.camera_names)
    geometry = None
    if "geometry" in graphs:
        geometry = {"process_res": int(info.image_size[0]), "intrinsics_scale": "per_axis",
                    "dataset_view_order": list(DATASET_VIEW_ORDER)}
    proprio: dict[str, Any] = {"dim": int(space["dim"])}
    if is_r1:
        proprio["r1pro_raw_dim"] = r1pro.R1PRO_RAW_DIM
    has_prompts = "task_id" in {s.name for s in graphs["action"].inputs}
    has_skill_head = "skill_logits" in {s.name for s in graphs["vlm"].outputs}
    skills = vocabulary(info.skill_names, int(cfg.num_skills), "skill") if (has_prompts or has_skill_head) else []
    tasks = vocabulary(info.task_names, int(cfg.num_tasks), "task") if has_prompts else []
    domains = dict(info.domains) if info.domains else (
        {"default": r1pro.R1PRO_DOMAIN_ID, "r1pro": r1pro.R1PRO_DOMAIN_ID} if is_r1 else {"default": 0})
    bad = {k: v for k, v in domains.items() if not 0 <= int(v) < int(cfg.num_domains)}
    if bad:
        raise ValueError(f"domains {bad} outside [0, num_domains={cfg.num_domains})")

    dim = int(space["dim"])
    grippers = [int(i) for i in space.get("gripper_dims", []) if int(i) < dim]
    if is_r1 and not grippers:
        grippers = list(r1pro.R1PRO_GRIPPER_DIMS)  # auto mode does not zero them, but they are never blended
    names = [str(n) for n in space.get("names", []) or []] or (list(r1pro.R1PRO_ACTION_NAMES) if is_r1 else [])
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "policy_kind": POLICY_KIND,
        "exporter": {"name": EXPORTER_NAME, "version": exporter_version, "torch": torch.__version__.split("+")[0],
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "onnx_opset": int(opset),
                     "python": platform.python_version()},
        "model_name": info.model_name,
        "source": info.source or {},
        "embodiment": r1pro.NAME if is_r1 else None,
        "action": {"dim": dim, "horizon": int(cfg.num_actions), "names": names, "gripper_dims": grippers},
        "cameras": {"names": list(info.camera_names), "image_size": [int(info.image_size[0]), int(info.image_size[1])],
                    "needs_pose": "geometry" in graphs},
        "proprio": {"dims": [int(proprio["dim"])] + ([r1pro.R1PRO_RAW_DIM] if is_r1 else [])},
        "skills": skills,
        "tasks": tasks,
        "graphs": {name: g.manifest_entry() for name, g in graphs.items()},
        "precision": info.precision,
        "max_batch": int(info.max_batch),
        "files": {},
        "parity": None,
        "tensorrt": None,
        "policy": {
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
            "domains": {k: int(v) for k, v in domains.items()},
            "tokenizer": info.tokenizer,
        },
    }
    manifest.update(info.extra)
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Hash every file, validate against the generic and the X-VLA schemas, write ``manifest.json``."""
    return core_manifest.write_manifest(root, manifest)
