"""Load an official DexVLA checkpoint folder strictly by key name, offline."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from xvla.export.policies.dexvla.config import DexVLAConfig, load_config
from xvla.export.policies.dexvla.model import DexVLAModel

TIED_KEY = "lm_head.weight"


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weight file")
    return files


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        part = load_file(str(f))
        dup = state.keys() & part.keys()
        if dup:
            raise ValueError(f"{f.name}: key {sorted(dup)[0]!r} also in another weight file")
        state.update(part)
    return state


def load_strict(model: DexVLAModel, state: dict[str, torch.Tensor]) -> None:
    """Every model key present with its shape, no extra key; the tied lm_head may be absent."""
    expected = model.state_dict()
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    missing = [k for k in expected if k not in state and not (tied and k == TIED_KEY)]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise KeyError(f"checkpoint is missing {len(missing)} key(s), first: {missing[0]!r}")
    if unexpected:
        raise KeyError(f"checkpoint has {len(unexpected)} unexpected key(s), first: {unexpected[0]!r}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"checkpoint key {k!r}: shape {tuple(v.shape)} != model {tuple(expected[k].shape)}")
    if tied and TIED_KEY in state and not torch.equal(state[TIED_KEY], state["model.embed_tokens.weight"]):
        raise ValueError(f"checkpoint key {TIED_KEY!r} differs from model.embed_tokens.weight but the config ties them")
    model.load_state_dict({k: v for k, v in state.items() if k != TIED_KEY or not tied}, strict=False)


def load_dexvla(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[DexVLAModel, DexVLAConfig]:
    folder = Path(folder)
    cfg = load_config(folder)
    model = DexVLAModel(cfg)
    load_strict(model, load_state(folder))
    return model.to(dtype).eval(), cfg
