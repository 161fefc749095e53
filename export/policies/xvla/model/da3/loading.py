"""Load official DA3 weights into `DA3Net` by key name.

Three layouts carry the same tensors under different prefixes:
  ""                         `DepthAnything3Net.state_dict()` (the conformance file),
  "model."                   the Hugging Face hub `model.safetensors` of `DepthAnything3`,
  "da3_inline.model.model."  the frozen DA3 inside a DA3-XVLA checkpoint.
Loading is strict for everything we build. Keys of modules we deliberately do not build (the
DualDPT `head`, `cam_dec`, and for giant the Gaussian heads, see `DA3Config.unbuilt_modules`)
are skipped and reported, never silently: the caller gets them back in `DA3LoadReport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from xvla.export.policies.xvla.model.da3.net import DA3Net

log = logging.getLogger(__name__)

KNOWN_PREFIXES = ("da3_inline.model.model.", "model.", "")
_PROBE = "backbone.pretrained.patch_embed.proj.weight"


@dataclass
class DA3LoadReport:
    prefix: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # DepthAnything3Net names, unbuilt modules


def detect_prefix(keys: Mapping[str, object] | list[str]) -> str:
    names = set(keys)
    for prefix in KNOWN_PREFIXES:
        if prefix + _PROBE in names:
            return prefix
    raise KeyError(f"no DA3 weights found: none of {[p + _PROBE for p in KNOWN_PREFIXES]} is in the state dict")


def load_da3_state_dict(
    net: DA3Net,
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
) -> DA3LoadReport:
    """Copy official DA3 weights into `net`; raise on any missing or unexpected key.

    With a non-empty prefix, keys outside it belong to other modules (e.g. the rest of an X-VLA
    checkpoint) and are not looked at. Returns which keys were loaded and which were ignored.
    """
    prefix = detect_prefix(state_dict) if prefix is None else prefix
    ours: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    ignore = net.cfg.ignored_prefixes
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith(ignore):
            ignored.append(name)
        else:
            ours[name] = value
    expected = net.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"DA3 checkpoint (prefix {prefix!r}) does not match config {net.cfg.name!r}: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
        )
    bad = [k for k, v in ours.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(
            "DA3 checkpoint shape mismatch: "
            + ", ".join(f"{k}: {tuple(ours[k].shape)} vs {tuple(expected[k].shape)}" for k in bad[:8])
        )
    net.load_state_dict(ours, strict=True)
    if ignored:
        log.info(
            "DA3: ignored %d tensors of modules not built for X-VLA (%s)",
            len(ignored),
            ", ".join(sorted({k.split(".")[0] for k in ignored})),
        )
    return DA3LoadReport(prefix=prefix, loaded=sorted(ours), ignored=sorted(ignored))


def load_da3_safetensors(net: DA3Net, path: str | Path, *, prefix: str | None = None) -> DA3LoadReport:
    """`load_da3_state_dict` from a `.safetensors` file (any of the three layouts)."""
    from safetensors.torch import load_file

    return load_da3_state_dict(net, load_file(str(path)), prefix=prefix)
