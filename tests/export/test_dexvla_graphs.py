"""DexVLA ONNX graphs (vision, prefill, decode, condition, denoise): each against PyTorch in ONNX Runtime
at several batch sizes and lengths, and the whole chunk run torch-free (runtime preprocessing + ORT
engines + numpy DDIM) against the official goldens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conformance.dexvla_goldens import dexvla_sets
from tests.conftest import conformance_root

pytestmark = pytest.mark.slow  # five exports, ~1 min on 2 cores

_SETS = dexvla_sets(conformance_root()) if conformance_root().is_dir() else []
GRAPH_NAMES = ["vision", "prefill", "decode", "condition", "denoise"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The graphs of the conformance tiny model (or the seeded tiny preset), exported once."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from xvla.export.policies.dexvla.checkpoint import load_dexvla
    from xvla.export.policies.dexvla.graphs import export_onnx, graphs
    from xvla.export.policies.dexvla.presets import build_seeded

    torch.set_num_threads(1)
    if _SETS:
        root = _SETS[0]
        model, _ = load_dexvla(root / "tiny_model")
        grid = load_file(str(root / "goldens.safetensors"))["prompt.image_grid_thw"]
        if len({tuple(r) for r in grid.tolist()}) != 1:
            pytest.skip("the vision graph needs one image size per export")
        grid_hw = (int(grid[0, 1]), int(grid[0, 2]))
    else:
        root, model, grid_hw = None, build_seeded("tiny-dexvla", 0), (4, 6)
    out = tmp_path_factory.mktemp("dexvla_onnx")
    specs = {g.name: g for g in graphs(model, grid_hw)}
    paths = {name: export_onnx(spec, out) for name, spec in specs.items()}
    return root, model, specs, paths


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_graph_matches_pytorch_at_dynamic_sizes(exported, name):
    from xvla.export.policies.dexvla.graphs import parity

    _, _, specs, paths = exported
    assert parity(specs[name], paths[name], [(1, 9), (2, 12), (3, 21)]) < 5e-5


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.skipif(not _SETS, reason="no DexVLA goldens under XVLA_CONFORMANCE_DIR")
def test_onnx_chunk_reproduces_the_official_actions(exported):
    from safetensors.numpy import load_file

    from xvla.runtime.policies.dexvla.preprocess import DexVLAPreprocessor
    from xvla.runtime.policies.dexvla.sampling import DDIM, film_row_masks

    root, model, specs, paths = exported
    meta = json.loads((root / "meta.json").read_text())
    g = load_file(str(root / "goldens.safetensors"))
    cfg = model.cfg
    s = {n: _session(p) for n, p in paths.items()}
    n_layers = cfg.text.num_hidden_layers

    pre = DexVLAPreprocessor.from_folder(root / "tiny_model")
    tasks = meta["configs"]["set"]["tasks"]
    views = g["input.images_uint8"]
    batch = pre.batch([pre.sample([np.ascontiguousarray(v[i].transpose(1, 2, 0)) for v in views], t)
                       for i, t in enumerate(tasks)])
    b, seq = batch.input_ids.shape
    n_img, p = batch.image_grid_thw.shape[0], int(np.prod(batch.image_grid_thw[0]))
    img = s["vision"].run(None, {"pixel_values": batch.pixel_values.reshape(n_img, p, -1)})[0]
    img = img.reshape(b, -1, img.shape[-1])
    hidden, logits, *kv = s["prefill"].run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                                                  "position_ids": batch.position_ids, "image_embeds": img})
    gk = meta["gen_kwargs"]
    eos, pad, n_max = gk["eos_token_id"], gk["pad_token_id"], gk["max_new_tokens"]
    rows, tokens, mask = [hidden], [], batch.attention_mask
    unfinished, n_new = np.ones(b, bool), np.zeros(b, np.int64)
    for step in range(n_max):
        nxt = np.where(unfinished, logits.argmax(-1), pad).astype(np.int64)
        tokens.append(nxt)
        n_new += unfinished
        unfinished &= nxt != eos
        if step == n_max - 1 or not unfinished.any():
            break
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        pos = np.broadcast_to((kv[0].shape[2] + batch.rope_deltas).reshape(1, b, 1), (3, b, 1)).astype(np.int64)
        feeds = {"token": nxt[:, None], "attention_mask": mask, "position_ids": np.ascontiguousarray(pos)}
        feeds.update({f"past.k.{i}": kv[i] for i in range(n_layers)})
        feeds.update({f"past.v.{i}": kv[n_layers + i] for i in range(n_layers)})
        h, logits, *kv = s["decode"].run(None, feeds)
        rows.append(h)
    new = np.stack(tokens, 1)
    np.testing.assert_array_equal(new, g["gen.new_token_ids"])
    rows = np.concatenate(rows, 1)
    seqs = np.concatenate([batch.input_ids, new], 1)
    im, rm = film_row_masks(seqs, seq, n_new, cfg.pad_token_id, rows.shape[1])
    cond = s["condition"].run(None, {"hidden": rows, "input_mask": im, "reasoning_mask": rm,
                                     "states": g["input.state_normalized"]})[0]
    ddim = DDIM(cfg.head.num_train_timesteps, cfg.head.num_inference_timesteps)
    np.testing.assert_array_equal(ddim.timesteps, g["sample.timesteps"])
    np.testing.assert_allclose(ddim.alphas_cumprod, g["sample.alphas_cumprod"], atol=1e-7, rtol=0)
    actions = ddim.sample(lambda x, t: s["denoise"].run(None, {"x": x, "t": t, "cond_emb": cond})[0],
                          g["sample.noise_init"])
    expected = g["e2e.actions"] if "e2e.actions" in g else g["sample.actions_per_sample_noise"]
    np.testing.assert_allclose(actions, expected, atol=1e-4, rtol=0)
