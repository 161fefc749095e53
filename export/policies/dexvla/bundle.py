"""DexVLA checkpoint (or seeded preset) -> a parity-gated bundle of kind ``dexvla`` (docs/bundle.md).

The bundle holds the five serving graphs of ``graphs.py`` with the batch axis first on every input
(what the runtime's ``BatchingEngine`` concatenates across sessions), the tokenizer/processor files the
torch-free preprocessing reads, and a format-2 manifest whose ``policy`` block carries everything the
runtime needs besides the graphs: the model config, token ids, the generation bound, the DDIM schedule,
the dataset normalisation stats and the preprocessing contract (``core/schemas/policy_dexvla.json``).

Two thin adapters around ``graphs.py`` (kept here so that file stays the model owner's):

* ``vision`` takes (B, views, patches, C*T*p*p) and returns (B, views*patches/4, H) = the prefill's
  ``image_embeds``: one row per *sample*, so a batch of B sessions is B rows, not 3B.
* ``prefill`` / ``decode`` take ``position_ids`` as (B, 3, q) (batch first) and transpose them to the
  library's (3, B, q).

Parity gate: the whole chunk (vision -> prefill -> greedy decode with KV cache -> FiLM/condition ->
DDIM over the denoise graph) in ONNX Runtime against ``DexVLAModel.predict`` on the same seeded inputs and
noise, batch 2 with left padding: generated ids must be equal, actions within 1e-4; each graph is also
checked alone at a dynamic size. Failure leaves ``<out>.failed/`` with the graphs and raises ParityError.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from xvla.core.manifest import FORMAT_VERSION, MANIFEST_NAME, load_schema, write_manifest
from xvla.export.errors import BundleExportError, ParityError
from xvla.export.policies.dexvla.config import DexVLAConfig
from xvla.export.policies.dexvla.graphs import OPSET, DexVLAGraph, export_onnx, graphs
from xvla.export.policies.dexvla.model import DexVLAModel

POLICY_KIND = "dexvla"
EXPORTER_NAME = "xvla-export"
# LeRobot's DexVLA (ALOHA) camera order = the order of the image tokens in the prompt.
DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
# ALOHA bimanual joint order (LeRobot aloha datasets): per arm 6 joints + gripper.
ALOHA_NAMES = tuple(f"{side}_{j}" for side in ("left", "right") for j in (
    "waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"))
ALOHA_GRIPPER_DIMS = (6, 13)
DEFAULT_MAX_NEW_TOKENS = 32  # official: 256; a served sub-step reasoning is a short sentence
PROMPT_BUCKET = 16  # prompts are left-padded to a multiple of this so sessions' prefill/decode calls merge
ACTION_TOLERANCE = 1e-4
GRAPH_TOLERANCE = 1e-4
MIN_COSINE = 0.99999
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
STATS_FILES = ("dataset_stats.json", "stats.json")
QWEN2VL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_NP_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
             "tensor(float16)": "float16"}


# ------------------------------------------------------------------------------------ graph adapters


class BatchedVision(nn.Module):
    """(B, V, P, D) patches -> (B, V*P/4, H) image embeddings (the prefill's ``image_embeds``)."""

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, v, p, d = pixel_values.shape
        out = self.vision(pixel_values.reshape(b * v, p, d))  # (B*V, P/4, H)
        return out.reshape(b, v * out.shape[1], out.shape[2])


class BatchFirstPrefill(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, position_ids, image_embeds):  # position_ids (B, 3, L)
        return self.inner(input_ids, attention_mask, position_ids.transpose(0, 1), image_embeds)


class BatchFirstDecode(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, token, attention_mask, position_ids, *past):  # position_ids (B, 3, 1)
        return self.inner(token, attention_mask, position_ids.transpose(0, 1), *past)


def serving_graphs(model: DexVLAModel, grid_hw: tuple[int, int], n_views: int) -> dict[str, DexVLAGraph]:
    """``graphs.graphs`` with every input batch-first (see the module docstring)."""
    specs = {g.name: g for g in graphs(model, grid_hw)}
    vis, pre, dec = specs["vision"], specs["prefill"], specs["decode"]

    def vision_ex(b, n):
        (px,) = vis.example(b * n_views, n)
        return (px.reshape(b, n_views, *px.shape[1:]),)

    def first(example):
        def ex(b, n):
            args = list(example(b, n))
            args[2] = args[2].transpose(0, 1).contiguous()
            return tuple(args)
        return ex

    specs["vision"] = DexVLAGraph("vision", BatchedVision(vis.module), vis.input_names, vis.output_names, vision_ex,
                                  {"pixel_values": {0: "batch"}})
    specs["prefill"] = DexVLAGraph("prefill", BatchFirstPrefill(pre.module), pre.input_names, pre.output_names,
                                   first(pre.example), {**pre.dynamic, "position_ids": {0: "batch", 2: "seq"}})
    specs["decode"] = DexVLAGraph("decode", BatchFirstDecode(dec.module), dec.input_names, dec.output_names,
                                  first(dec.example), {**dec.dynamic, "position_ids": {0: "batch"}},
                                  varargs_from=dec.varargs_from)
    return specs


def _graph_entry(spec: DexVLAGraph, path: Path, opset: int) -> dict[str, Any]:
    """The manifest's graph entry: tensors with the batch axis named ``batch``, dynamic axes by name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def tensor(t, names: Mapping[int, str]) -> dict[str, Any]:
        shape: list[Any] = []
        for i, d in enumerate(t.shape):
            if i == 0:
                shape.append("batch")
            elif i in names:
                shape.append(names[i])
            else:
                shape.append(d if isinstance(d, int) else str(d))
        return {"name": t.name, "dtype": _NP_TYPES.get(t.type, t.type), "shape": shape}

    data = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    return {"file": path.name, "external_data": data, "opset": opset,
            "inputs": [tensor(t, spec.dynamic.get(t.name, {})) for t in sess.get_inputs()],
            "outputs": [tensor(t, {}) for t in sess.get_outputs()]}


# ------------------------------------------------------------------------------------ sources


@dataclass
class Source:
    model: DexVLAModel
    name: str
    source: dict[str, Any]
    folder: Optional[Path] = None  # the checkpoint folder (tokenizer, processor, stats)


def load_source(checkpoint: Optional[Path], preset: Optional[str], seed: int = 0) -> Source:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if preset is not None:
        from xvla.export.policies.dexvla.presets import build_seeded

        return Source(build_seeded(preset, seed), preset, {"kind": "preset", "preset": preset, "seed": seed})
    from xvla.export.policies.dexvla.checkpoint import load_dexvla

    folder = Path(checkpoint).expanduser().resolve()
    model, _ = load_dexvla(folder)
    return Source(model, folder.name, {"kind": "checkpoint", "path": str(folder)}, folder)


# ------------------------------------------------------------------------------------ tokenizer + stats


def build_standin_tokenizer(dest: Path) -> list[str]:
    """A byte-level stand-in with the conformance layout (ids 0..255 bytes, 256..999 unused, the 14 Qwen2-VL
    special tokens at 1000..1013) for seeded presets that ship no tokenizer. Not a trained vocabulary."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for i in range(len(vocab), 1000):
        vocab[f"<unused_{i}>"] = i
    tok = Tokenizer(BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(QWEN2VL_SPECIALS))
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "model_max_length": 32768}, indent=2))
    return ["tokenizer.json", "tokenizer_config.json"]


def _copy_tokenizer(src: Path, dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    files = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for n in files:
        shutil.copyfile(src / n, dest / n)
    return files


def _stats_vector(raw: Mapping[str, Any], keys: Sequence[str], dim: int, where: str) -> Optional[list[float]]:
    for k in keys:
        node: Any = raw
        for part in k.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            v = np.asarray(node, np.float64).reshape(-1)
            if v.shape != (dim,) or not np.all(np.isfinite(v)):
                raise BundleExportError(f"{where}: {k} must be {dim} finite numbers, got shape {list(v.shape)}")
            return [float(x) for x in v]
    return None


def normalization_stats(stats_file: Optional[Path], folder: Optional[Path], state_dim: int,
                        action_dim: int) -> dict[str, Any]:
    """LeRobot's DexVLA normalisation: state MEAN_STD ((x - mean) / (std + 1e-8)), action MIN_MAX.

    From ``--stats`` (keys ``state_mean``/``state_std``/``action_min``/``action_max``, or LeRobot's nested
    ``observation.state.{mean,std}`` / ``action.{min,max}``), else a stats file in the checkpoint folder,
    else identity (recorded as such)."""
    path = Path(stats_file) if stats_file else next((folder / n for n in STATS_FILES
                                                     if folder is not None and (folder / n).is_file()), None)
    if path is None:
        return {"source": "identity (no dataset stats given)",
                "state": {"mode": "mean_std", "mean": [0.0] * state_dim, "std": [1.0] * state_dim, "eps": 1e-8},
                "action": {"mode": "min_max", "min": [-1.0] * action_dim, "max": [1.0] * action_dim}}
    if not path.is_file():
        raise BundleExportError(f"--stats {path}: not found")
    raw = json.loads(path.read_text())
    where = f"--stats {path}"
    got = {
        "mean": _stats_vector(raw, ("state_mean", "observation.state.mean"), state_dim, where),
        "std": _stats_vector(raw, ("state_std", "observation.state.std"), state_dim, where),
        "min": _stats_vector(raw, ("action_min", "action.min"), action_dim, where),
        "max": _stats_vector(raw, ("action_max", "action.max"), action_dim, where),
    }
    missing = [k for k, v in got.items() if v is None]
    if missing:
        raise BundleExportError(f"{where}: missing {missing} (state_mean, state_std, action_min, action_max)")
    return {"source": str(path),
            "state": {"mode": "mean_std", "mean": got["mean"], "std": got["std"], "eps": 1e-8},
            "action": {"mode": "min_max", "min": got["min"], "max": got["max"]}}


# ------------------------------------------------------------------------------------ parity


def _cmp(ref: np.ndarray, got: np.ndarray, tol: float) -> dict[str, Any]:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape or not np.all(np.isfinite(got)):
        return {"max_abs": 1e30, "cosine": 0.0, "tolerance": tol, "passed": False}
    diff = float(np.abs(ref - got).max(initial=0.0))
    na, nb = float(np.linalg.norm(ref)), float(np.linalg.norm(got))
    cos = 1.0 if na == nb == 0.0 else (0.0 if na == 0.0 or nb == 0.0 else float((ref.ravel() @ got.ravel()) / (na * nb)))
    return {"max_abs": diff, "cosine": cos, "tolerance": tol, "passed": bool(diff <= tol and cos >= MIN_COSINE)}


@dataclass
class DexVLAParityReport:
    steps: int
    seed: int
    batch: int
    backend: str = "onnxruntime-cpu"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o["passed"] for o in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "steps": self.steps, "seed": self.seed, "batch": self.batch,
                "precision": "fp32", "passed": self.passed, "outputs": self.outputs}

    def format(self) -> str:
        return "\n".join(f"  {k:<18} max_abs {o['max_abs']:.3e} (tol {o['tolerance']:.1e})  cosine {o['cosine']:.8f}  "
                         f"{'ok' if o['passed'] else 'FAIL'}" for k, o in self.outputs.items())


def _synthetic_prompts(cfg: DexVLAConfig, n_views: int, tokens_per_view: int, seed: int, batch: int):
    """Seeded prompts shaped like the chat template (text, per view <vs><image_pad>*n<ve>, text), the
    first sample shorter (left-padded) -> input_ids, attention_mask (B, L)."""
    rng = np.random.default_rng(seed)
    t = cfg.tokens
    rows = []
    for i in range(batch):
        ids = list(rng.integers(0, 900, 5))
        for _ in range(n_views):
            ids += [t.vision_start_token_id] + [t.image_token_id] * tokens_per_view + [t.vision_end_token_id]
        ids += list(rng.integers(0, 900, 4 + 3 * i))
        rows.append(ids)
    seq = max(len(r) for r in rows)
    input_ids = np.full((batch, seq), cfg.pad_token_id, np.int64)
    mask = np.zeros((batch, seq), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, seq - len(r):] = r
        mask[i, seq - len(r):] = 1
    return input_ids, mask


def chunk_parity(model: DexVLAModel, specs: Mapping[str, DexVLAGraph], paths: Mapping[str, Path],
                 grid_hw: tuple[int, int], n_views: int, steps: int, max_new_tokens: int, seed: int = 0,
                 batch: int = 2) -> DexVLAParityReport:
    """The whole chunk in ONNX Runtime (as the runtime runs it) vs ``DexVLAModel.predict``."""
    import onnxruntime as ort

    from xvla.export.policies.dexvla.film import film_masks
    from xvla.export.policies.dexvla.sampler import DDIMSampler

    cfg = model.cfg
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = {n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for n, p in paths.items()}
    report = DexVLAParityReport(steps=steps, seed=seed, batch=batch)
    for name, spec in specs.items():  # each graph alone at a size other than the export example's
        args = spec.example(3, 9)
        with torch.no_grad():
            ref = spec.module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess[name].run(spec.output_names, {k: v.numpy() for k, v in zip(spec.input_names, args)})
        worst = max((_cmp(r.numpy(), g, GRAPH_TOLERANCE) for r, g in zip(ref, got)), key=lambda o: o["max_abs"])
        report.outputs[f"graph.{name}"] = worst

    gh, gw = grid_hw
    patches = gh * gw
    patch_dim = cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size ** 2
    gen = torch.Generator().manual_seed(seed)
    input_ids, mask = _synthetic_prompts(cfg, n_views, patches // 4, seed, batch)
    pixels = torch.randn(batch, n_views, patches, patch_dim, generator=gen)
    grid = torch.tensor([[1, gh, gw]] * (batch * n_views))
    states = torch.randn(batch, cfg.head.state_dim, generator=gen)
    noise = torch.randn(batch, cfg.head.num_queries, cfg.head.output_dim, generator=gen)
    eos = cfg.tokens.eos_token_id
    model.sampler = DDIMSampler(cfg.head.num_train_timesteps, steps)
    with torch.no_grad():
        ref = model.predict(torch.from_numpy(input_ids), torch.from_numpy(mask), pixels.reshape(-1, patch_dim), grid,
                            states, noise, max_new_tokens, eos, eos)
        position_ids, deltas = model.rope_index(torch.from_numpy(input_ids), grid, torch.from_numpy(mask))

    # ONNX Runtime, the way the runtime chains the graphs
    n_layers = cfg.text.num_hidden_layers
    img = sess["vision"].run(None, {"pixel_values": pixels.numpy()})[0]
    hidden, logits, *kv = sess["prefill"].run(None, {
        "input_ids": input_ids, "attention_mask": mask, "image_embeds": img,
        "position_ids": np.ascontiguousarray(position_ids.numpy().transpose(1, 0, 2))})
    rows, tokens, m = [hidden], [], mask
    unfinished, n_new = np.ones(batch, bool), np.zeros(batch, np.int64)
    dl = deltas.numpy()
    for step in range(max_new_tokens):
        nxt = np.where(unfinished, logits.argmax(-1), eos).astype(np.int64)
        tokens.append(nxt)
        n_new += unfinished
        unfinished &= nxt != eos
        if step == max_new_tokens - 1 or not unfinished.any():
            break
        m = np.concatenate([m, np.ones((batch, 1), np.int64)], axis=1)
        pos = np.broadcast_to((kv[0].shape[2] + dl).reshape(batch, 1, 1), (batch, 3, 1)).astype(np.int64)
        feeds = {"token": nxt[:, None], "attention_mask": m, "position_ids": np.ascontiguousarray(pos)}
        feeds.update({f"past.k.{i}": kv[i] for i in range(n_layers)})
        feeds.update({f"past.v.{i}": kv[n_layers + i] for i in range(n_layers)})
        h, logits, *kv = sess["decode"].run(None, feeds)
        rows.append(h)
    new = np.stack(tokens, 1)
    ref_new = ref["generation"].new_tokens.numpy()
    same = new.shape == ref_new.shape and bool(np.array_equal(new, ref_new))
    report.outputs["tokens"] = {"max_abs": 0.0 if same else float(np.sum(new != ref_new) if new.shape == ref_new.shape
                                                                 else new.size),
                                "cosine": 1.0 if same else 0.0, "tolerance": 0.0, "passed": same}
    all_rows = np.concatenate(rows, 1)
    seqs = torch.from_numpy(np.concatenate([input_ids, new], 1))
    im, rm = film_masks(seqs, input_ids.shape[1], torch.from_numpy(n_new), cfg.pad_token_id, all_rows.shape[1])
    cond = sess["condition"].run(None, {"hidden": all_rows, "input_mask": im.float().numpy(),
                                        "reasoning_mask": rm.float().numpy(), "states": states.numpy()})[0]

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = np.full((x.shape[0],), int(t), np.int64)
        return torch.from_numpy(sess["denoise"].run(None, {"x": x.numpy(), "t": tt, "cond_emb": cond})[0])

    actions = model.sampler.sample(denoise, noise.clone())
    report.outputs["actions"] = _cmp(ref["actions"].numpy(), actions.numpy(), ACTION_TOLERANCE)
    model.sampler = DDIMSampler(cfg.head.num_train_timesteps, cfg.head.num_inference_timesteps)
    return report


# ------------------------------------------------------------------------------------ manifest


def _versions(opset: int) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "unknown"

    return {"name": EXPORTER_NAME, "version": v("xvla-runtime"), "torch": torch.__version__, "onnx_opset": opset,
            "onnx": v("onnx"), "onnxruntime": v("onnxruntime"), "python": platform.python_version()}


def grid_for(image_size: tuple[int, int], cfg: DexVLAConfig) -> tuple[int, int]:
    """The vision patch grid of a camera frame resized to ``image_size`` (Qwen2-VL smart_resize, 28 px)."""
    factor = cfg.vision.patch_size * cfg.vision.spatial_merge_size
    h, w = image_size
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    return hb // cfg.vision.patch_size, wb // cfg.vision.patch_size


@dataclass
class DexVLAExportOptions:
    image_size: tuple[int, int] = (56, 84)
    camera_names: Sequence[str] = DEFAULT_CAMERAS
    max_batch: int = 8
    opset: int = OPSET
    steps: Optional[int] = None  # DDIM steps (default: the config's num_inference_timesteps)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stats: Optional[Path] = None
    tokenizer_dir: Optional[Path] = None
    parity: bool = True
    parity_seed: int = 0


def policy_block(cfg: DexVLAConfig, opts: DexVLAExportOptions, grid_hw: tuple[int, int], steps: int,
                 stats: dict[str, Any], tokenizer: dict[str, Any], token_ids: Mapping[str, int]) -> dict[str, Any]:
    from xvla.export.policies.dexvla.sampler import squaredcos_cap_v2_alphas_cumprod

    gh, gw = grid_hw
    text = cfg.text
    return {
        "model_config": cfg.to_dict(),
        "tokens": dict(token_ids),
        "generation": {"strategy": "greedy", "max_new_tokens": int(opts.max_new_tokens),
                       "eos_token_id": int(token_ids["eos"]), "fill_token_id": int(token_ids["eos"])},
        "diffusion": {"scheduler": "ddim", "num_train_timesteps": cfg.head.num_train_timesteps,
                      "default_steps": steps, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
                      "clip_sample": 1.0, "timestep_spacing": "leading", "set_alpha_to_one": True, "eta": 0.0,
                      "alphas_cumprod": [float(x) for x in squaredcos_cap_v2_alphas_cumprod(
                          cfg.head.num_train_timesteps).tolist()]},
        "normalization": stats,
        "preprocess": {
            "camera_names": list(opts.camera_names), "image_size": list(opts.image_size), "resize_filter": "bicubic",
            "grid_hw": [gh, gw], "image_tokens_per_view": gh * gw // cfg.vision.spatial_merge_size ** 2,
            "patch_dim": cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size ** 2,
            "chat_template": "qwen2-vl-instruct", "prompt_bucket": PROMPT_BUCKET, "padding_side": "left",
        },
        "kv_cache": {"layers": text.num_hidden_layers, "kv_heads": text.num_key_value_heads,
                     "head_dim": text.hidden_size // text.num_attention_heads},
        "tokenizer": tokenizer,
    }


def _token_ids(tok_dir: Path, cfg: DexVLAConfig) -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids = {"pad": tok.token_to_id("<|endoftext|>"), "eos": tok.token_to_id("<|im_end|>"),
           "image_pad": tok.token_to_id("<|image_pad|>"), "vision_start": tok.token_to_id("<|vision_start|>"),
           "vision_end": tok.token_to_id("<|vision_end|>")}
    want = {"pad": cfg.pad_token_id, "eos": cfg.tokens.eos_token_id, "image_pad": cfg.tokens.image_token_id,
            "vision_start": cfg.tokens.vision_start_token_id, "vision_end": cfg.tokens.vision_end_token_id}
    bad = {k: (ids[k], want[k]) for k in ids if ids[k] != want[k]}
    if bad:
        raise BundleExportError(f"tokenizer {tok_dir}: special token ids {bad} (tokenizer, config) disagree")
    return {k: int(v) for k, v in ids.items()}


def export_bundle(src: Source, out_dir: Path, opts: DexVLAExportOptions, reporter: Any) -> Path:
    """Graphs, tokenizer files, parity gate, manifest; written to a staging folder and moved into place."""
    t0 = time.perf_counter()
    cfg = src.model.cfg
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise BundleExportError(f"-o {out_dir}: exists, is not empty and is not a bundle; refusing to replace it")
    if opts.max_batch < 1:
        raise BundleExportError(f"--max-batch must be >= 1, got {opts.max_batch}")
    if len(opts.camera_names) < 1:
        raise BundleExportError("--camera-names: at least one camera")
    steps = int(opts.steps or cfg.head.num_inference_timesteps)
    if not 0 < steps <= cfg.head.num_train_timesteps:
        raise BundleExportError(f"--steps must be in 1..{cfg.head.num_train_timesteps}, got {steps}")
    grid = grid_for(tuple(opts.image_size), cfg)  # type: ignore[arg-type]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with reporter.step("tokenizer") as rec:
            tok_src = opts.tokenizer_dir or src.folder
            if tok_src is not None and (Path(tok_src) / "tokenizer.json").is_file():
                files = _copy_tokenizer(Path(tok_src), staging / "tokenizer")
                tokenizer = {"dir": "tokenizer", "files": files, "source": f"copied from {tok_src}"}
            else:
                files = build_standin_tokenizer(staging / "tokenizer")
                tokenizer = {"dir": "tokenizer", "files": files,
                             "source": "built: byte-level stand-in (not a trained vocabulary)"}
            token_ids = _token_ids(staging / "tokenizer", cfg)
            rec.detail = tokenizer["source"]
        stats = normalization_stats(opts.stats, src.folder, cfg.head.state_dim, cfg.head.output_dim)
        specs = serving_graphs(src.model, grid, len(opts.camera_names))
        paths: dict[str, Path] = {}
        for name, spec in specs.items():
            with reporter.step(f"export {name}.onnx"):
                paths[name] = export_onnx(spec, staging, opset=opts.opset)
        parity = None
        if opts.parity:
            with reporter.step("parity gate (onnxruntime vs pytorch, whole chunk)"):
                rep = chunk_parity(src.model, specs, paths, grid, len(opts.camera_names), steps,
                                   min(opts.max_new_tokens, 8), seed=opts.parity_seed)
            (staging / "parity_report.json").write_text(json.dumps(rep.to_dict(), indent=2))
            if not rep.passed:
                failed = out_dir.parent / f"{out_dir.name}.failed"
                shutil.rmtree(failed, ignore_errors=True)
                staging.rename(failed)
                raise ParityError(rep)
            (staging / "parity_report.json").unlink()
            parity = rep.to_dict()
        state_dim = cfg.head.state_dim
        dim = cfg.head.output_dim
        aloha = dim == len(ALOHA_NAMES)
        manifest = {
            "format_version": FORMAT_VERSION, "policy_kind": POLICY_KIND, "exporter": _versions(opts.opset),
            "model_name": src.name, "source": src.source, "embodiment": None,
            "action": {"dim": dim, "horizon": cfg.head.num_queries, "names": list(ALOHA_NAMES) if aloha else [],
                       "gripper_dims": list(ALOHA_GRIPPER_DIMS) if aloha else []},
            "cameras": {"names": list(opts.camera_names), "image_size": list(opts.image_size), "needs_pose": False},
            "proprio": {"dims": [state_dim]}, "skills": [], "tasks": [],
            "graphs": {n: _graph_entry(specs[n], p, opts.opset) for n, p in paths.items()},
            "precision": "fp32", "max_batch": int(opts.max_batch), "files": {}, "parity": parity, "tensorrt": None,
            "export_seconds": round(time.perf_counter() - t0, 2),
            "policy": policy_block(cfg, opts, grid, steps, stats, tokenizer, token_ids),
        }
        write_manifest(staging, manifest, load_schema("policy_dexvla.json"))
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def parse_image_size(text: Optional[str], default: tuple[int, int]) -> tuple[int, int]:
    if not text:
        return default
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise BundleExportError(f"--image-size expects HxW (e.g. 240x320), got {text!r}")
    return int(parts[0]), int(parts[1])


def default_image_size(cfg: DexVLAConfig) -> tuple[int, int]:
    """Tiny models: 56x84 (the conformance size, grid 4x6); real sizes: 240x320, LeRobot's DexVLA resize."""
    return (56, 84) if cfg.text.hidden_size <= 256 else (240, 320)


__all__ = ["DexVLAExportOptions", "export_bundle", "load_source", "serving_graphs", "chunk_parity"]
