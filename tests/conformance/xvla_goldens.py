"""Discovery and loading of the X-VLA conformance goldens (public or held-out set).

Nothing about the set is hard-coded: checkpoint folders are found by the ``tiny_*`` pattern,
batch / ids / masks come from ``inputs.safetensors`` and ``meta.json``, the action width from
each checkpoint's config, the step counts and transformer-call names from the golden keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

MAIN_GOLDENS = "goldens_2c4fedf.safetensors"
DELTA_GOLDENS = "goldens_v2_delta.safetensors"


def xvla_root(conformance_dir: Path) -> Optional[Path]:
    """``<dir>/xvla`` (the shared layout) or ``<dir>`` itself when it directly holds meta.json."""
    for cand in (Path(conformance_dir) / "xvla", Path(conformance_dir)):
        if (cand / "meta.json").is_file() and (cand / "inputs.safetensors").is_file():
            return cand
    return None


def checkpoint_names(root: Optional[Path]) -> list[str]:
    if root is None:
        return []
    return sorted(p.name for p in root.glob("tiny_*") if (p / "config.json").is_file())


@dataclass
class GoldenSet:
    root: Path
    meta: dict
    inputs: dict[str, torch.Tensor]

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])


@dataclass
class CheckpointGoldens:
    name: str
    path: Path
    main: dict[str, torch.Tensor]
    delta: Optional[dict[str, torch.Tensor]]

    def steps(self) -> list[int]:
        return sorted({int(m.group(1)) for k in self.main if (m := re.fullmatch(r"gen(\d+)\.actions", k))})

    def tcall_prefixes(self) -> list[str]:
        return sorted({k.split(".")[0] for k in self.main if k.endswith(".x_t_m") and k.startswith("tcall")})

    def block_out_keys(self, prefix: str) -> dict[int, str]:
        return {int(m.group(1)): k for k in self.main
                if (m := re.fullmatch(re.escape(prefix) + r"\.block(\d+)_out", k))}


@lru_cache(maxsize=4)
def load_set(root: Path) -> GoldenSet:
    with open(root / "meta.json") as f:
        meta = json.load(f)
    return GoldenSet(root=root, meta=meta, inputs=load_file(str(root / "inputs.safetensors")))


@lru_cache(maxsize=8)
def load_checkpoint_goldens(root: Path, name: str) -> CheckpointGoldens:
    path = root / name
    delta = path / DELTA_GOLDENS
    return CheckpointGoldens(name=name, path=path, main=load_file(str(path / MAIN_GOLDENS)),
                             delta=load_file(str(delta)) if delta.is_file() else None)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), f"shape {tuple(a.shape)} != golden {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
