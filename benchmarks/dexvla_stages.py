"""DexVLA chunk latency per stage in PyTorch (vision, prefill, decode per token, FiLM + diffusion).

    python -m xvla.benchmarks.dexvla_stages [--preset tiny-dexvla] [--batch 1] [--threads 1] [--repeats 20] [--onnx]

With ``--onnx`` the same stages also run through the exported ONNX graphs in ONNX Runtime (CPU, same
thread count; the export takes a few minutes) and the ORT / PyTorch ratio is reported per stage.

Seeded random weights of a preset, three 224x224 cameras (the real DexVLA eval size would be 252x308),
a fixed prompt; medians over ``--repeats`` runs after a warm-up. Prints JSON. Not a unit test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from xvla.export.policies.dexvla.model import KVCache
from xvla.export.policies.dexvla.presets import build_seeded, preset

PATCH_DIM = 3 * 2 * 14 * 14


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _inputs(name: str, batch: int, views: int, hw: int, text_tokens: int, seed: int = 0):
    cfg = preset(name)
    gen = torch.Generator().manual_seed(seed)
    grid = hw // 14
    tok = cfg.tokens
    per_view = [tok.vision_start_token_id] + [tok.image_token_id] * (grid * grid // 4) + [tok.vision_end_token_id]
    text = torch.randint(0, min(cfg.text.vocab_size, 1000), (text_tokens,), generator=gen).tolist()
    ids = torch.tensor([per_view * views + text] * batch)
    pv = torch.randn(batch * views * grid * grid, PATCH_DIM, generator=gen)
    grids = torch.tensor([[1, grid, grid]] * (batch * views))
    states = torch.randn(batch, cfg.head.state_dim, generator=gen)
    noise = torch.randn(batch, cfg.head.num_queries, cfg.head.output_dim, generator=gen)
    return cfg, ids, torch.ones_like(ids), pv, grids, states, noise


@torch.no_grad()
def measure(name: str, batch: int, views: int, hw: int, text_tokens: int, new_tokens: int, repeats: int,
            device: str = "cpu", dtype: torch.dtype = torch.float32,
            time_ms: Callable[[Callable[[], object], int], float] | None = None, model: object = None) -> dict:
    """Per-stage medians; ``device``/``dtype``/``time_ms`` (e.g. CUDA events) let the GPU device check reuse it."""
    time_ms = time_ms or _median_ms
    model = model if model is not None else build_seeded(name, seed=0).to(device=device, dtype=dtype)
    cfg, ids, mask, pv, grid, states, noise = _inputs(name, batch, views, hw, text_tokens)
    ids, mask, grid = ids.to(device), mask.to(device), grid.to(device)
    pv, states, noise = pv.to(device, dtype), states.to(device, dtype), noise.to(device, dtype)
    pos, deltas = model.rope_index(ids, grid, mask)
    img = model.image_embeds(pv, grid)
    hidden, cache = model.prefill(ids, mask, img, pos)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)

    def decode_n() -> None:  # new_tokens - 1 decode steps on a copy of the prefilled cache
        c = KVCache(len(cache.keys), cache.keys, cache.values)
        m = mask
        for _ in range(new_tokens - 1):
            m = torch.cat([m, m.new_ones(batch, 1)], dim=1)
            model.lm_head(model.decode_step(tokens, m, deltas, c)[:, -1])

    rows = torch.cat([hidden, hidden[:, -1:].expand(-1, new_tokens - 1, -1)], dim=1)
    n_new = torch.full((batch,), new_tokens, device=device)
    seqs = torch.cat([ids, torch.zeros(batch, new_tokens, dtype=torch.long, device=device)], dim=1)

    def diffusion() -> None:
        cond = model.film(seqs, rows, ids.shape[1], n_new)["action_hidden_states"]
        model.sample_actions(cond, states, noise)

    res = {
        "vision_ms": time_ms(lambda: model.image_embeds(pv, grid), repeats),
        "prefill_ms": time_ms(lambda: model.lm_head(model.prefill(ids, mask, img, pos)[0][:, -1]), repeats),
        "decode_per_token_ms": time_ms(decode_n, repeats) / max(1, new_tokens - 1),
        "diffusion_ms": time_ms(diffusion, repeats),
    }
    res["chunk_ms_estimate"] = (res["vision_ms"] + res["prefill_ms"] + res["decode_per_token_ms"] * (new_tokens - 1)
                                + res["diffusion_ms"])
    return {"preset": name, "batch": batch, "views": views, "image": f"{hw}x{hw}", "prompt_tokens": int(ids.shape[1]),
            "new_tokens": new_tokens, "ddim_steps": cfg.head.num_inference_timesteps, "chunk": cfg.head.num_queries,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            **{k: round(v, 3) for k, v in res.items()}}


def measure_onnx(name: str, batch: int, views: int, hw: int, text_tokens: int, new_tokens: int, repeats: int,
                 threads: int) -> dict:
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from xvla.export.policies.dexvla.graphs import export_onnx, graphs
    from xvla.runtime.policies.dexvla.sampling import DDIM

    model = build_seeded(name, seed=0)
    cfg, ids, mask, pv, grid, states, noise = _inputs(name, batch, views, hw, text_tokens)
    pos, deltas = model.rope_index(ids, grid, mask)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        sess = {g.name: ort.InferenceSession(str(export_onnx(g, tmp)), opts, providers=["CPUExecutionProvider"])
                for g in graphs(model, (hw // 14, hw // 14))}
    n_layers = cfg.text.num_hidden_layers
    pv_np = pv.numpy().reshape(batch * views, (hw // 14) ** 2, -1)
    img = sess["vision"].run(None, {"pixel_values": pv_np})[0].reshape(batch, -1, cfg.text.hidden_size)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy(), "image_embeds": img}
    hidden, _, *kv = sess["prefill"].run(None, feeds)
    tok = np.zeros((batch, 1), np.int64)

    def decode_n() -> None:
        m, cache = mask.numpy(), kv
        for _ in range(new_tokens - 1):
            m = np.concatenate([m, np.ones((batch, 1), np.int64)], axis=1)
            p = np.ascontiguousarray(np.broadcast_to((cache[0].shape[2] + deltas.numpy()).reshape(1, batch, 1),
                                                     (3, batch, 1)))
            f = {"token": tok, "attention_mask": m, "position_ids": p}
            f.update({f"past.k.{i}": cache[i] for i in range(n_layers)})
            f.update({f"past.v.{i}": cache[n_layers + i] for i in range(n_layers)})
            _, _, *cache = sess["decode"].run(None, f)

    rows = np.concatenate([hidden, np.repeat(hidden[:, -1:], new_tokens - 1, axis=1)], axis=1)
    r = np.arange(rows.shape[1])[None].repeat(batch, 0)
    im, rm = (r < ids.shape[1]).astype(np.float32), (r >= ids.shape[1]).astype(np.float32)
    ddim = DDIM(cfg.head.num_train_timesteps, cfg.head.num_inference_timesteps)

    def diffusion() -> None:
        cond = sess["condition"].run(None, {"hidden": rows, "input_mask": im, "reasoning_mask": rm,
                                            "states": states.numpy()})[0]
        ddim.sample(lambda x, t: sess["denoise"].run(None, {"x": x, "t": t, "cond_emb": cond})[0], noise.numpy())

    return {
        "vision_ms": _median_ms(lambda: sess["vision"].run(None, {"pixel_values": pv_np}), repeats),
        "prefill_ms": _median_ms(lambda: sess["prefill"].run(None, feeds), repeats),
        "decode_per_token_ms": _median_ms(decode_n, repeats) / max(1, new_tokens - 1),
        "diffusion_ms": _median_ms(diffusion, repeats),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-dexvla")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--image", type=int, default=224, help="square camera size (multiple of 28)")
    p.add_argument("--text-tokens", type=int, default=40)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (2 on a loaded 2-core box oversubscribes)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--onnx", action="store_true", help="also export the graphs and time them in ONNX Runtime")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = measure(a.preset, a.batch, a.views, a.image, a.text_tokens, a.new_tokens, a.repeats)
    if a.onnx:
        ort_ms = measure_onnx(a.preset, a.batch, a.views, a.image, a.text_tokens, a.new_tokens, a.repeats, a.threads)
        res["onnxruntime"] = {k: round(v, 3) for k, v in ort_ms.items()}
        res["ort_over_torch"] = {k: round(v / res[k], 3) for k, v in ort_ms.items()}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
