"""Discovery and loading of the DexVLA conformance goldens (public, held-out or any other set).

A set is a folder with ``meta.json``, ``goldens.safetensors`` and ``tiny_model/``. It is looked for at
``<dir>/dexvla``, ``<dir>`` itself and their direct sub-folders (``public/``, ``heldout/``). Sizes, batch,
token counts and step counts all come from the golden tensors and ``meta.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from xvla.export.policies.dexvla.checkpoint import load_dexvla
from xvla.export.policies.dexvla.config import DexVLAConfig
from xvla.export.policies.dexvla.model import DexVLAModel


def _is_set(p: Path) -> bool:
    return (p / "meta.json").is_file() and (p / "goldens.safetensors").is_file() and (p / "tiny_model").is_dir()


def dexvla_sets(conformance_dir: Path) -> list[Path]:
    found: list[Path] = []
    for base in (Path(conformance_dir) / "dexvla", Path(conformance_dir)):
        for cand in [base, *sorted(p for p in base.glob("*") if p.is_dir())] if base.is_dir() else []:
            if _is_set(cand) and cand.resolve() not in [f.resolve() for f in found]:
                found.append(cand)
    return found


@dataclass
class DexVLASet:
    root: Path
    meta: dict
    g: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return str(self.meta.get("set", self.root.name))

    @property
    def batch(self) -> int:
        return int(self.g["prompt.input_ids"].shape[0])

    @property
    def prompt_len(self) -> int:
        return int(self.g["prompt.input_ids"].shape[1])

    @property
    def max_new_tokens(self) -> int:
        return int(self.meta["gen_kwargs"]["max_new_tokens"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["gen_kwargs"]["eos_token_id"])

    @property
    def pad_id_gen(self) -> int:
        return int(self.meta["gen_kwargs"]["pad_token_id"])

    def valid_rows(self, n_rows: int) -> torch.Tensor:
        """(B, n_rows) bool: prompt rows that are not left padding, then every generated row."""
        am = self.g["prompt.attention_mask"].bool()
        extra = torch.ones(am.shape[0], n_rows - am.shape[1], dtype=torch.bool)
        return torch.cat([am, extra], dim=1)[:, :n_rows]


@lru_cache(maxsize=4)
def load_set(root: Path) -> DexVLASet:
    return DexVLASet(root=root, meta=json.loads((root / "meta.json").read_text()),
                     g=load_file(str(root / "goldens.safetensors")))


@lru_cache(maxsize=4)
def load_model(root: Path) -> tuple[DexVLAModel, DexVLAConfig]:
    return load_dexvla(root / "tiny_model")
