"""Checkpoint I/O in the official X-VLA (Hugging Face) layout.

A checkpoint folder holds ``config.json`` (with nested ``florence_config``) and either
``model.safetensors`` or shards listed by ``model.safetensors.index.json``; the BART tokenizer
files may sit next to them. Rules:

* keys must match by name; missing or unexpected keys are an error that names them
  (``strict=False`` loads what matches and REPORTS the rest in ``model.load_report`` and the log);
* the BART word embedding is tied: ``vlm.language_model.model.shared.weight`` and
  ``vlm.language_model.model.encoder.embed_tokens.weight`` are one tensor; a file may store
  it under either name (official files store only ``shared``); we write only ``shared``;
* shapes must match (a mismatch is always an error: it means a different architecture).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

if TYPE_CHECKING:
    from xvla.export.policies.xvla.model.xvla import XVLA

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARED_KEY = "vlm.language_model.model.shared.weight"
TIED_KEY = "vlm.language_model.model.encoder.embed_tokens.weight"
TIED_ALIASES = {TIED_KEY: SHARED_KEY}  # duplicate -> canonical


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (names the offending keys)."""


@dataclass
class LoadReport:
    """What a non-strict load skipped; empty lists after a strict load."""

    missing: list[str] = field(default_factory=list)  # in the model, not in the file (left as initialised)
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model (ignored)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, model shape)
    # in the file under the model's ``ignored_checkpoint_prefixes`` (sub-networks deliberately not
    # built, e.g. DA3's depth head); skipped on purpose, so they do not make a load unclean
    ignored: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def fmt(keys: list) -> str:
            shown = ", ".join(str(k) for k in keys[:limit])
            return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

        parts = []
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {fmt(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {fmt(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatches ({}): {}".format(
                len(self.mismatched), fmt([f"{k} file {a} vs model {b}" for k, a, b in self.mismatched])))
        return "; ".join(parts) or "all keys matched"


# --------------------------------------------------------------------------- reading


def read_config(path: Union[str, Path]) -> dict[str, Any]:
    cfg_path = Path(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found (expected an X-VLA checkpoint folder)")
    with open(cfg_path) as f:
        return json.load(f)


def weight_files(path: Union[str, Path]) -> list[Path]:
    """The safetensors files of a checkpoint: the single file, or every shard of the index."""
    path = Path(path)
    index = path / INDEX_NAME
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: 'weight_map' is missing or empty")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {missing}")
        return [path / s for s in shards]
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"neither {single.name} nor {INDEX_NAME} found in {path}")


def read_state_dict(path: Union[str, Path], device: str = "cpu") -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt", device=device) as f:
            for key in f.keys():
                if key in state:
                    raise CheckpointError(f"key {key!r} appears in more than one shard ({file.name})")
                state[key] = f.get_tensor(key)
    return state


def resolve_tied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the tied BART embedding to its canonical name (``shared``) whichever alias the file used."""
    state = dict(state)
    for dup, canon in TIED_ALIASES.items():
        if dup in state:
            tensor = state.pop(dup)
            if canon in state and not torch.equal(state[canon], tensor):
                raise CheckpointError(f"tied embedding: {dup!r} and {canon!r} are both stored and differ")
            state.setdefault(canon, tensor)
    return state


def compare_keys(model_state: dict[str, torch.Tensor], file_state: dict[str, torch.Tensor]) -> LoadReport:
    model_keys = {k for k in model_state if k not in TIED_ALIASES}
    report = LoadReport(
        missing=sorted(model_keys - file_state.keys()),
        unexpected=sorted(file_state.keys() - model_keys),
    )
    for key in sorted(model_keys & file_state.keys()):
        a, b = tuple(file_state[key].shape), tuple(model_state[key].shape)
        if a != b:
            report.mismatched.append((key, a, b))
    return report


# --------------------------------------------------------------------------- loading


def drop_ignored(model: Any, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Split off file keys under ``model.ignored_checkpoint_prefixes`` (none for most models)."""
    prefixes = tuple(getattr(model, "ignored_checkpoint_prefixes", ()))
    if not prefixes:
        return state, []
    ignored = sorted(k for k in state if k.startswith(prefixes))
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}, ignored


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init`` a no-op while a model that will be overwritten is built.

    On the meta device the random initialisers are pointless, and ``normal_`` there pulls in
    torch's compiler stack (seconds of import time) for nothing.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)



def load_pretrained(path: Union[str, Path], strict: bool = True, model_cls: Optional[type] = None,
                    dtype: Optional[torch.dtype] = None, device: str = "cpu",
                    config_overrides: Optional[dict[str, Any]] = None) -> "XVLA":
    """Build the model from ``config.json`` and load its weights by key name.

    ``strict=True`` builds on the meta device and assigns the file's tensors (no random
    init, no double memory); any missing/unexpected/mismatched key raises CheckpointError.
    ``strict=False`` builds a normally initialised model, loads what matches, and records the
    rest in ``model.load_report`` (also logged as a warning). Shape mismatches always raise.
    """
    from xvla.export.policies.xvla.model.config import XVLAConfig

    if model_cls is None:
        raise TypeError("load_pretrained needs the model class (XVLA.from_pretrained passes it)")
    path = Path(path)
    raw = read_config(path)
    if config_overrides:
        raw = {**raw, **config_overrides}
    config = XVLAConfig.from_dict(raw)
    state = resolve_tied(read_state_dict(path, device=device))

    if strict:
        with torch.device("meta"), skip_weight_init():
            model = model_cls(config)
        state, ignored = drop_ignored(model, state)
        report = compare_keys(model.state_dict(), state)
        if not report.clean:
            raise CheckpointError(f"checkpoint {path} does not match the model: {report.describe()} "
                                  "(pass strict=False to load anyway and get a report)")
        full = dict(state)
        full[TIED_KEY] = state[SHARED_KEY]
        model.load_state_dict(full, strict=True, assign=True)
        _retie(model)
    else:
        model = model_cls(config)
        state, ignored = drop_ignored(model, state)
        report = compare_keys(model.state_dict(), state)
        if report.mismatched:
            raise CheckpointError(f"checkpoint {path} has shape mismatches: {report.describe()}")
        loadable = {k: v for k, v in state.items() if k not in report.unexpected}
        model.load_state_dict(loadable, strict=False)
        if not report.clean:
            log.warning("non-strict load of %s: %s", path, report.describe())
    report.ignored = ignored
    if ignored:
        log.info("%s: skipped %d tensors of sub-networks the model does not build (%s)", path, len(ignored),
                 ", ".join(getattr(model, "ignored_checkpoint_prefixes", ())))
    model.load_report = report
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()


def _retie(model: "XVLA") -> None:
    """After ``assign=True`` make sure the encoder's embed_tokens is still the shared module."""
    lm = model.vlm.language_model.model
    lm.encoder.embed_tokens = lm.shared


# --------------------------------------------------------------------------- saving


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = size.strip().upper()
    for unit, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def save_pretrained(model: "XVLA", path: Union[str, Path], max_shard_size: Optional[Union[int, str]] = None) -> Path:
    """Write config.json and the weights (tied duplicate dropped), sharded above ``max_shard_size``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / CONFIG_NAME, "w") as f:
        json.dump(model.config.to_dict(), f, indent=2, sort_keys=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in TIED_ALIASES}
    meta = {"format": "pt"}
    limit = _parse_size(max_shard_size) if max_shard_size is not None else None
    for stale in [path / WEIGHTS_NAME, path / INDEX_NAME, *path.glob("model-*-of-*.safetensors")]:
        if stale.exists():
            stale.unlink()
    if limit is None:
        save_file(state, str(path / WEIGHTS_NAME), metadata=meta)
        return path
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(path / INDEX_NAME, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    return path
