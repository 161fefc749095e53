"""Seeded inputs for each exported graph, shaped from the bundle manifest (so every backend gets the same arrays)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _int_high(manifest: Mapping[str, Any], name: str) -> int:
    cfg = manifest["policy"].get("model_config", {})
    text = cfg.get("florence_config", {}).get("text_config", {})
    return {
        "input_ids": int(text.get("vocab_size", 2)),
        "domain_id": int(cfg.get("num_domains", 1)),
        "task_id": int(cfg.get("num_tasks", 1)),
        "skill_id": int(cfg.get("num_skills", 1)),
    }.get(name, 2)


def graph_feeds(manifest: Mapping[str, Any], graph: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random feeds for ``graph`` at ``batch``: ids in range, poses a rigid transform, t in (0, 1]."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in manifest["graphs"][graph]["inputs"]:
        name, dtype = spec["name"], spec["dtype"]
        shape = tuple(batch if d == "batch" else int(d) for d in spec["shape"])
        if dtype == "bool":
            feeds[name] = np.ones(shape, dtype=bool)
        elif dtype == "int64":
            feeds[name] = rng.integers(0, _int_high(manifest, name), size=shape, dtype=np.int64)
        elif name == "t":
            feeds[name] = np.full(shape, 0.5, dtype=np.float32)
        elif name == "extrinsics":
            e = np.broadcast_to(np.eye(4, dtype=np.float32), shape).copy()
            e[..., :3, 3] = rng.uniform(-0.5, 0.5, shape[:-2] + (3,))
            feeds[name] = e
        elif name == "intrinsics":
            k = np.zeros(shape, np.float32)
            k[..., 0, 0] = k[..., 1, 1] = 200.0
            k[..., 0, 2] = k[..., 1, 2] = 112.0
            k[..., 2, 2] = 1.0
            feeds[name] = k
        else:
            feeds[name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def chunk_feeds(manifest: Mapping[str, Any], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Everything ``generate_actions`` takes, for the whole-chunk stage (torch and the runtime's Policy)."""
    vlm = graph_feeds(manifest, "vlm", batch, seed)
    act = graph_feeds(manifest, "action", batch, seed)
    feeds = {"input_ids": vlm["input_ids"], "image_input": vlm["image_input"], "image_mask": vlm["image_mask"],
             "domain_id": act["domain_id"], "proprio": act["proprio"][:, : int(manifest["policy"]["action_space"]["dim"])]}
    for k in ("task_id", "skill_id"):
        if k in act:
            feeds[k] = act[k]
    if "geometry" in manifest["graphs"]:
        geo = graph_feeds(manifest, "geometry", batch, seed)
        feeds["extrinsics"], feeds["intrinsics"] = geo["extrinsics"], geo["intrinsics"]
    horizon = int(manifest["policy"]["action_space"]["num_actions"])
    dm = int(manifest["policy"]["action_space"]["model_dim"])
    feeds["noise"] = np.random.default_rng(seed + 1).standard_normal((batch, horizon, dm), dtype=np.float32)
    return feeds
