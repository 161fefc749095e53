"""DexVLA served chunk latency per stage: the bundle through the service (ONNX Runtime) vs the PyTorch model.

    python -m xvla.benchmarks.dexvla_serving [--bundle DIR | --preset tiny-dexvla] [--threads 1]
                                             [--repeats 20] [--new-tokens 16] [--steps N]

Served side: ``PolicyService.infer`` on one observation (three random camera frames at the bundle's size,
a 14-d state, an instruction, injected noise) = what ``xvla-serve`` runs for a unary Infer: the session's
checks, decode of the frames, ``DexVLAPolicy.prepare`` and ``plan`` with every engine call through the
batchers; the per-stage times are the reply's ``stage_ms``. PyTorch side: the same prepared inputs through
``DexVLAModel`` (the export side's model) stage by stage, same thread count. Both generate exactly
``--new-tokens`` tokens (``max_new_tokens``; a random-weight model rarely stops early; the JSON reports the
count) and run the same DDIM steps. Medians over ``--repeats`` after a warm-up; JSON with the ORT/PyTorch
ratio per stage. Without ``--bundle`` the preset is exported first (about a minute). Not a unit test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

STAGES = ("preprocess", "vision", "prefill", "decode_tokens", "condition", "diffusion")


def _median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def _observation(cameras, state_dim: int, seed: int = 0):
    from xvla.core.tensors import encode_image_raw, numpy_to_tensor
    from xvla.proto import policy_pb2 as pb

    rng = np.random.default_rng(seed)
    obs = pb.Observation(frame_index=0, instruction="pick up the red cup and put it in the bin")
    for name, (h, w) in cameras:
        obs.cameras.add(name=name, image=encode_image_raw(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    obs.proprio.CopyFrom(numpy_to_tensor(rng.standard_normal(state_dim).astype(np.float32)))
    return obs


def served(bundle: Path, threads: int, repeats: int, new_tokens: int, steps: int, noise: np.ndarray) -> dict:
    from xvla.core.tensors import numpy_to_tensor
    from xvla.proto import policy_pb2 as pb
    from xvla.runtime.service import PolicyService, ServiceConfig
    from xvla.runtime.skills import RoutingTable

    svc = PolicyService(RoutingTable.single(bundle), ServiceConfig(intra_op_threads=threads))
    svc.load()
    spec = svc.gate_policy.spec
    obs = _observation([(c, spec.image_size) for c in spec.camera_names], spec.proprio_dims[0])
    policy = svc.gate_policy
    header = pb.SessionHeader(task_id=-1, max_new_tokens=new_tokens,
                              execution=pb.ExecutionSettings(denoising_steps=steps))
    req = pb.InferRequest(session=header,
                          observation=obs, noise=numpy_to_tensor(noise))
    stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "total", "model", "wall")}
    text = ""
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        resp = svc.infer(req)
        wall = (time.perf_counter() - t0) * 1e3
        if i == 0:
            continue
        for s in STAGES:
            stages[s].append(resp.timings.stage_ms[s])
        stages["total"].append(resp.timings.total_ms)
        stages["model"].append(sum(resp.timings.stage_ms[s] for s in STAGES[1:]))
        stages["wall"].append(wall)
        text = resp.text
    svc.close()
    return {"stages_ms": {k: _median(v) for k, v in stages.items()}, "text_chars": len(text), "obs": obs,
            "policy": policy}


def pytorch(model, prepared, policy, threads: int, repeats: int, new_tokens: int, steps: int,
            noise: np.ndarray) -> dict:
    import torch

    from xvla.export.policies.dexvla.sampler import DDIMSampler

    torch.set_num_threads(threads)
    model.sampler = DDIMSampler(model.cfg.head.num_train_timesteps, steps)
    ids_np, mask_np, _, _ = policy._batch([prepared])
    ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
    views, patches, dim = prepared.pixel_values.shape
    pv = torch.from_numpy(prepared.pixel_values.reshape(views * patches, dim))
    grid = torch.tensor([[1, *policy.grid_hw]] * views)
    states = torch.from_numpy(prepared.state[None])
    x0 = torch.from_numpy(noise[None])
    eos = policy.eos
    times: dict[str, list[float]] = {s: [] for s in (*STAGES[1:], "model")}

    def timed(name: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        out = fn()
        times[name].append((time.perf_counter() - t0) * 1e3)
        return out

    n_generated = 0
    with torch.no_grad():
        for i in range(repeats + 1):
            start = {k: len(v) for k, v in times.items()}
            img = timed("vision", lambda: model.image_embeds(pv, grid))

            def prefill():
                pos, deltas = model.rope_index(ids, grid, mask)
                h, cache = model.prefill(ids, mask, img, pos)
                return h, cache, deltas, model.lm_head(h[:, -1])

            h, cache, deltas, logits = timed("prefill", prefill)

            def decode():
                rows, toks, m, lg = [h], [], mask, logits
                for step in range(new_tokens):
                    nxt = lg.argmax(-1)
                    toks.append(nxt)
                    if step == new_tokens - 1 or int(nxt[0]) == eos:
                        break
                    m = torch.cat([m, m.new_ones(1, 1)], dim=1)
                    r = model.decode_step(nxt, m, deltas, cache)
                    rows.append(r)
                    lg = model.lm_head(r[:, -1])
                return torch.cat(rows, 1), torch.stack(toks, 1)

            rows, toks = timed("decode_tokens", decode)
            n_generated = int(toks.shape[1])

            def condition():
                seqs = torch.cat([ids, toks], 1)
                film = model.film(seqs, rows, ids.shape[1], torch.tensor([toks.shape[1]]))
                return model.policy_head.condition(film["action_hidden_states"], states)

            cond = timed("condition", condition)
            timed("diffusion", lambda: model.sampler.sample(lambda x, t: model.policy_head.denoise(x, t, cond), x0))
            times["model"].append(sum(times[s][-1] for s in STAGES[1:]))
            if i == 0:  # warm-up
                for k, n in start.items():
                    del times[k][n:]
    return {"stages_ms": {k: _median(v) for k, v in times.items()}, "new_tokens": n_generated}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None, help="an exported DexVLA bundle (default: export --preset)")
    p.add_argument("--preset", default="tiny-dexvla")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both sides")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the bundle's)")
    a = p.parse_args(argv)

    import onnxruntime
    import torch

    from xvla.core.tensors import tensor_to_numpy
    from xvla.export.policies.dexvla.bundle import DexVLAExportOptions, export_bundle, load_source
    from xvla.export.progress import Reporter
    from xvla.runtime.bundle import Bundle
    from xvla.runtime.policies.base import ObservationInput, Timings
    from xvla.runtime.wire import decode_cameras

    tmp = None
    bundle = a.bundle
    if bundle is None:
        tmp = tempfile.TemporaryDirectory()
        bundle = export_bundle(load_source(None, a.preset, a.seed), Path(tmp.name) / "bundle", DexVLAExportOptions(),
                               Reporter())
    spec_h = Bundle.load(bundle)
    source = spec_h.manifest["source"]
    if source.get("kind") == "preset":
        model = load_source(None, source["preset"], int(source.get("seed", 0))).model
    else:
        model = load_source(Path(source["path"]), None).model
    steps = a.steps or int(spec_h.policy["diffusion"]["default_steps"])
    noise = np.random.default_rng(1).standard_normal((spec_h.horizon, spec_h.dim)).astype(np.float32)

    ort_res = served(bundle, a.threads, a.repeats, a.new_tokens, steps, noise)
    policy = ort_res.pop("policy")
    obs = ort_res.pop("obs")
    prepared = policy.prepare(ObservationInput(decode_cameras(obs), tensor_to_numpy(obs.proprio, "proprio"),
                                               obs.instruction), Timings())
    torch_res = pytorch(model, prepared, policy, a.threads, a.repeats, a.new_tokens, steps, noise)
    ratio = {s: round(ort_res["stages_ms"][s] / torch_res["stages_ms"][s], 3)
             for s in (*STAGES[1:], "model") if torch_res["stages_ms"][s] > 0}
    print(json.dumps({
        "bundle": str(bundle), "model": spec_h.name, "cameras": list(spec_h.camera_names),
        "image_size": list(spec_h.image_size), "prompt_tokens": int(len(prepared.input_ids)),
        "new_tokens": torch_res["new_tokens"], "ddim_steps": steps, "chunk": spec_h.horizon, "threads": a.threads,
        "repeats": a.repeats, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
        "served_onnxruntime_ms": ort_res["stages_ms"], "pytorch_ms": torch_res["stages_ms"],
        "ort_over_torch": ratio,
        "note": "served = PolicyService.infer stage_ms (model = the five model stages; total adds preprocess; "
                "wall = the whole infer call); "
                "pytorch = DexVLAModel on the same prepared inputs",
    }, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
